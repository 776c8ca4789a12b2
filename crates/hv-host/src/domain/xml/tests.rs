use super::*;

const FULL: &str = r#"<domain type='kvm'>
  <name>web1</name>
  <uuid>6a3e2f9c-8f1e-4c55-9a5b-0d8f3c1e2a77</uuid>
  <description>a test domain</description>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/var/lib/hv/guest.elf</kernel>
    <initrd>/var/lib/hv/initrd.cpio</initrd>
    <cmdline>console=ttyS0 test=idle</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/hv/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <disk type='volume' device='disk'>
      <source pool='default' volume='data'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <source bridge='br0'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/hv/web1.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='/var/log/hv/web1.log'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
"#;

fn minimal(devices: &str) -> String {
    format!(
        "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>1</vcpu>\
         <os><type>hvm</type><kernel>/k</kernel></os><devices>{devices}</devices></domain>"
    )
}

#[test]
fn reads_every_supported_element() {
    let d = DomainDef::from_xml(FULL).unwrap();
    assert_eq!(d.name.as_str(), "web1");
    assert_eq!(d.uuid.to_string(), "6a3e2f9c-8f1e-4c55-9a5b-0d8f3c1e2a77");
    assert_eq!(d.description.as_deref(), Some("a test domain"));
    assert_eq!(d.memory_kib, 64 * 1024);
    assert_eq!(d.vcpus, 2);
    assert_eq!(d.os.kernel, PathBuf::from("/var/lib/hv/guest.elf"));
    assert_eq!(d.os.initrd, Some(PathBuf::from("/var/lib/hv/initrd.cpio")));
    assert_eq!(d.os.cmdline.as_deref(), Some("console=ttyS0 test=idle"));
    assert_eq!(d.on_crash, LifecycleAction::Preserve);
    // Interleaved disks and interfaces are both collected, in document order per kind.
    assert_eq!(d.disks.len(), 2);
    assert_eq!(
        d.disks[0].source,
        DiskSource::File { path: "/var/lib/hv/web1.qcow2".into(), format: DiskFormat::Qcow2 }
    );
    assert_eq!(
        d.disks[1].source,
        DiskSource::Volume { pool: "default".into(), volume: "data".into(), format: None }
    );
    assert!(d.disks[1].read_only);
    assert_eq!(d.interfaces.len(), 2);
    assert_eq!(d.interfaces[0].source, InterfaceSource::Network("default".into()));
    assert_eq!(d.interfaces[0].mac.to_string(), "52:54:00:12:34:56");
    assert_eq!(d.interfaces[1].source, InterfaceSource::Bridge("br0".into()));
    assert_eq!(&d.interfaces[1].mac.0[..3], &[0x52, 0x54, 0x00], "generated in libvirt's range");
    assert_eq!(d.serial, SerialDef::File("/var/log/hv/web1.log".into()));
}

#[test]
fn dumpxml_reads_back_identically() {
    let d = DomainDef::from_xml(FULL).unwrap();
    let text = d.to_xml();
    assert!(text.contains("<name>web1</name>"), "{text}");
    assert!(text.contains("<memory unit=\"KiB\">65536</memory>"), "{text}");
    let again = DomainDef::from_xml(&text).unwrap();
    assert_eq!(again, d);
    assert_eq!(again.to_xml(), text);
}

#[test]
fn file_disks_without_a_driver_type_are_raw() {
    let d = DomainDef::from_xml(&minimal(
        "<disk type='file'><source file='/d.img'/><target dev='vda'/></disk>",
    ))
    .unwrap();
    assert_eq!(
        d.disks[0].source,
        DiskSource::File { path: "/d.img".into(), format: DiskFormat::Raw }
    );
    assert_eq!(d.memory_kib, 65536, "libvirt's default unit is KiB");
}

#[test]
fn units_follow_libvirt() {
    for (unit, value, kib) in [
        ("GiB", "1", 1 << 20),
        ("MB", "64", 62500),
        ("bytes", "67108864", 65536),
        ("k", "2048", 2048),
    ] {
        let x = XAmount { unit: Some(unit.into()), value: value.into() };
        assert_eq!(amount_kib("memory", &x).unwrap(), kib, "{value} {unit}");
    }
    let x = XAmount { unit: Some("parsecs".into()), value: "1".into() };
    assert!(matches!(amount_kib("memory", &x), Err(DefError::Unsupported { .. })));
    let x = XAmount { unit: Some("TiB".into()), value: "99999999999".into() };
    assert!(matches!(amount_kib("memory", &x), Err(DefError::Invalid { .. })));
}

/// Every element or attribute hv cannot honour is refused with its name in the message.
#[test]
fn unsupported_elements_are_named() {
    let cases = [
        (minimal("<emulator>/usr/bin/qemu</emulator>"), "emulator"),
        (minimal("<disk type='file'><source file='/a'/><target dev='vda'/><shareable/></disk>"), "shareable"),
        (minimal("<disk type='network'><source file='/a'/><target dev='vda'/></disk>"), "network"),
        (minimal("<disk type='file'><driver type='vmdk'/><source file='/a'/><target dev='vda'/></disk>"), "vmdk"),
        (minimal("<disk type='file'><source file='/a'/><target dev='hda' bus='ide'/></disk>"), "ide"),
        (minimal("<interface type='user'><source network='x'/></interface>"), "user"),
        (minimal("<interface type='network'><source network='x'/><model type='e1000'/></interface>"), "e1000"),
        (minimal("<graphics type='vnc'/>"), "graphics"),
        (minimal("<serial type='tcp'/>"), "tcp"),
        (
            "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>1</vcpu>\
             <os><type>hvm</type><kernel>/k</kernel></os><cputune/></domain>"
                .to_string(),
            "cputune",
        ),
        (
            "<domain type='qemu'><name>d</name><memory>65536</memory><vcpu>1</vcpu>\
             <os><type>hvm</type><kernel>/k</kernel></os></domain>"
                .to_string(),
            "qemu",
        ),
        (
            "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>1</vcpu>\
             <os><type>hvm</type><boot dev='hd'/></os></domain>"
                .to_string(),
            "boot",
        ),
    ];
    for (xml, word) in cases {
        let e = DomainDef::from_xml(&xml).expect_err(word);
        assert!(e.to_string().contains(word), "error for {word} does not name it: {e}");
    }
}

#[test]
fn bad_values_are_refused() {
    let bad = [
        "<domain type='kvm'><name>../etc</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
        "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>0</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
        "<domain type='kvm'><name>d</name><memory>100</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
        "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>relative</kernel></os></domain>",
        "<domain type='kvm'><name>d</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>",
        "<domain type='kvm'><name>d</name><uuid>nope</uuid><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
        "<domain type='kvm'><name>d</name><memory>65536</memory><currentMemory>32768</currentMemory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
        "<domain type='kvm'><name>d</name>",
        "not xml at all",
        "",
    ];
    for xml in bad {
        assert!(DomainDef::from_xml(xml).is_err(), "accepted: {xml}");
    }
    let two_vda = minimal(
        "<disk type='file'><source file='/a'/><target dev='vda'/></disk>\
         <disk type='file'><source file='/b'/><target dev='vda'/></disk>",
    );
    assert!(DomainDef::from_xml(&two_vda).unwrap_err().to_string().contains("used by two disks"));
    let multicast = minimal("<interface type='bridge'><mac address='01:00:5e:00:00:01'/><source bridge='b'/></interface>");
    assert!(DomainDef::from_xml(&multicast).is_err());
    let big = "x".repeat(MAX_XML_LEN + 1);
    assert_eq!(DomainDef::from_xml(&big), Err(XmlError::TooLarge(MAX_XML_LEN + 1)));
}

proptest::proptest! {
    /// Arbitrary bytes never panic the parser.
    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        let _ = DomainDef::from_xml(&s);
    }

    /// Mutating a valid document byte by byte never panics and never yields an invalid definition.
    #[test]
    fn mutated_documents_never_panic(pos in 0usize..FULL.len(), byte in proptest::prelude::any::<u8>()) {
        let mut bytes = FULL.as_bytes().to_vec();
        bytes[pos] = byte;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(d) = DomainDef::from_xml(text) {
                proptest::prop_assert!(d.validate().is_ok());
            }
        }
    }
}

#[test]
fn a_running_pty_domain_names_its_pty_and_reads_back() {
    let def = DomainDef::from_xml(&minimal("<serial type='pty'><target port='0'/></serial>"))
        .expect("pty serial");
    assert_eq!(def.serial, SerialDef::Pty);
    let live = def.to_xml_live(Some(Path::new("/dev/pts/7")));
    assert!(live.contains("<serial type=\"pty\">"), "{live}");
    assert!(live.contains("<source path=\"/dev/pts/7\"/>"), "{live}");
    assert!(live.contains("<console type=\"pty\" tty=\"/dev/pts/7\">"), "{live}");
    // What dumpxml gives of a running domain defines the same domain again.
    let again = DomainDef::from_xml(&live).expect("live XML reads back");
    assert_eq!(again.serial, SerialDef::Pty);
    // Stopped: no path.
    assert!(!def.to_xml().contains("/dev/pts"));
    assert_eq!(def.to_xml_live(None), def.to_xml());
}

#[test]
fn backing_stores_are_shown_as_libvirt_nests_them_and_accepted_on_input() {
    let xml = minimal(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='/p/vm1'/><target dev='vda' bus='virtio'/></disk>",
    );
    let d = DomainDef::from_xml(&xml).unwrap();
    let chain = vec![
        BackingLayer { path: "/p/mid".into(), format: Some("qcow2".into()) },
        BackingLayer { path: "/p/base".into(), format: Some("raw".into()) },
    ];
    let text = d.to_xml_with(None, &[chain]);
    let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = "<source file=\"/p/vm1\"/> \
        <backingStore type=\"file\" index=\"1\"> <format type=\"qcow2\"/> <source file=\"/p/mid\"/> \
        <backingStore type=\"file\" index=\"2\"> <format type=\"raw\"/> <source file=\"/p/base\"/> \
        <backingStore/> </backingStore> </backingStore> <target dev=\"vda\" bus=\"virtio\"/>";
    assert!(squashed.contains(want), "{text}");
    // libvirt's own output reads back as the same definition (the chain is the headers').
    assert_eq!(DomainDef::from_xml(&text).unwrap(), d);
    // A deep nest is skipped without recursing.
    let deep = format!(
        "<disk type='file'><source file='/p/vm1'/>{}{}<target dev='vda'/></disk>",
        "<backingStore>".repeat(30_000),
        "</backingStore>".repeat(30_000)
    );
    let r = DomainDef::from_xml(&minimal(&deep));
    assert!(r.is_ok(), "{r:?}");
}
