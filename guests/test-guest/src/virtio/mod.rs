//! Virtio drivers (to come): virtio-mmio transport discovery from the command line
//! (`virtio_mmio.device=SIZE@ADDR:IRQ`) and ACPI, then minimal polling blk and net drivers
//! (with DHCP, ARP and ICMP for net). Nothing here yet.
