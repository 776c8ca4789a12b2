/* Host -> guest frame generator for benches/peers/net.sh: sends COUNT copies of a SIZE-byte
 * Ethernet frame (to DSTMAC, EtherType 0x88b5) out of interface IFNAME through an AF_PACKET
 * socket, in sendmmsg batches, as fast as the kernel takes them. A TAP drops what its reader
 * (the VMM) does not drain in time; the guest counts what arrives.
 *
 *   cc -O2 -o net_gen net_gen.c && ./net_gen IFNAME DSTMAC SIZE COUNT
 *
 * Prints "sent <frames> <seconds>". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFNAME DSTMAC SIZE COUNT\n", argv[0]);
        return 2;
    }
    unsigned char frame[1514] = {0};
    unsigned m[6];
    if (sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", argv[2]);
        return 2;
    }
    long size = atol(argv[3]), count = atol(argv[4]);
    if (size < 60 || size > (long)sizeof frame || count <= 0) {
        fprintf(stderr, "SIZE must be 60..1514, COUNT positive\n");
        return 2;
    }
    for (int i = 0; i < 6; i++)
        frame[i] = (unsigned char)m[i];
    memcpy(frame + 6, "\x02\x00\x00\x00\x00\x02\x88\xb5", 8);

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(argv[1]);
    if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        perror(argv[1]);
        return 1;
    }
    struct iovec iov = {frame, (size_t)size};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0;
    while (sent < count) {
        long n = count - sent < BATCH ? count - sent : BATCH;
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            perror("sendmmsg");
            return 1;
        }
        sent += r;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("sent %ld %.6f\n", sent, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
