/*
 * The raw-ioctl floor hv's benchmarks are compared against: the fewest KVM calls that do the
 * same job, with no VMM around them.
 *
 *   raw_kvm create N   - N x (KVM_CREATE_VM, irqchip, PIT, 128 MiB memslot, 1 vCPU, close)
 *   raw_kvm pio N      - a real-mode guest doing N `out` exits, then `hlt`
 *   raw_kvm mmio N     - a real-mode guest doing N MMIO write exits, then `hlt`
 *
 * Prints the mean time per operation in nanoseconds. Build: cc -O2 -o raw_kvm raw_kvm.c
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (128ul << 20)
#define die(m) do { perror(m); exit(1); } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int create(int kvm, int irqchip, void **mem, int *vcpu, struct kvm_run **run) {
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
    if (irqchip) {
        struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
        if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
        if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
    }
    *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (*mem == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = MEM,
                                             .userspace_addr = (uint64_t)*mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
    *vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (*vcpu < 0) die("KVM_CREATE_VCPU");
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    *run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, *vcpu, 0);
    if (*run == MAP_FAILED) die("mmap run");
    return vm;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: raw_kvm create|pio|mmio N\n"); return 2; }
    long n = atol(argv[2]);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    void *mem; int vcpu; struct kvm_run *run;
    if (!strcmp(argv[1], "create")) {
        double t0 = now();
        for (long i = 0; i < n; i++) {
            int vm = create(kvm, 1, &mem, &vcpu, &run);
            munmap(run, sz); close(vcpu); close(vm); munmap(mem, MEM);
        }
        printf("create+destroy: %.0f ns\n", (now() - t0) / n);
        return 0;
    }
    int mmio = !strcmp(argv[1], "mmio");
    int vm = create(kvm, 0, &mem, &vcpu, &run);
    /* At 0x1000, real mode, the same loop the test guest runs for its exit benches:
       mov ecx, n; mov dx, 0x6e1; loop: xor eax, eax; out dx, al (or mov [0], al with
       ds = 0xf000, an address outside the memslot: an MMIO exit); dec ecx; jnz loop; hlt */
    uint8_t *p = (uint8_t *)mem + 0x1000;
    *p++ = 0x66; *p++ = 0xb9; memcpy(p, &n, 4); p += 4;          /* mov ecx, n */
    *p++ = 0xba; *p++ = 0xe1; *p++ = 0x06;                       /* mov dx, 0x6e1 */
    uint8_t *loop = p;
    if (mmio) {
        *p++ = 0xa2; *p++ = 0x00; *p++ = 0x00;                   /* mov [0x0000], al */
    } else {
        *p++ = 0x66; *p++ = 0x31; *p++ = 0xc0;                   /* xor eax, eax */
        *p++ = 0xee;                                             /* out dx, al */
    }
    *p++ = 0x66; *p++ = 0x49;                                    /* dec ecx */
    *p++ = 0x75; *p = (uint8_t)(loop - (p + 1)); p++;            /* jnz loop */
    *p++ = 0xf4;                                                 /* hlt */
    if (mmio) {
        /* Make 0xf0000.. MMIO: shrink the memslot to 960 KiB. */
        struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = 0,
                                                 .userspace_addr = (uint64_t)mem };
        ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
        r.memory_size = 0xf0000;
        if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("memslot");
    }
    struct kvm_sregs s;
    if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
    s.cs.base = 0; s.cs.selector = 0;
    s.ds.base = mmio ? 0xf0000 : 0; s.ds.selector = mmio ? 0xf000 : 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
    struct kvm_regs r = { .rip = 0x1000, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
    long exits = 0;
    double t0 = now();
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO || run->exit_reason == KVM_EXIT_MMIO) { exits++; continue; }
        if (run->exit_reason == KVM_EXIT_HLT) break;
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        return 1;
    }
    double t = now() - t0;
    printf("%s exits: %ld, %.0f ns per exit round trip\n", mmio ? "mmio" : "pio", exits, t / (exits ? exits : 1));
    return 0;
}
