//! [`VmConfig::validate`]: everything about a configuration that can be checked before any
//! file is opened; a failure is a [`ConfigError`] (an HTTP 400).

use super::*;

impl VmConfig {
    fn check_unsupported(&self) -> Result<(), ConfigError> {
        let u = self;
        for (name, v) in [
            ("rate_limit_groups", &u.rate_limit_groups),
            ("rng", &u.rng),
            ("balloon", &u.balloon),
            ("fs", &u.fs),
            ("generic_vhost_user", &u.generic_vhost_user),
            ("pmem", &u.pmem),
            ("debug_console", &u.debug_console),
            ("devices", &u.devices),
            ("user_devices", &u.user_devices),
            ("vdpa", &u.vdpa),
            ("vsock", &u.vsock),
            ("numa", &u.numa),
            ("iommu", &u.iommu),
            ("watchdog", &u.watchdog),
            ("rtc", &u.rtc),
            ("pci_segments", &u.pci_segments),
            ("platform", &u.platform),
            ("tpm", &u.tpm),
            ("landlock_enable", &u.landlock_enable),
            ("landlock_rules", &u.landlock_rules),
        ] {
            refuse_set(name, v)?;
        }
        Ok(())
    }
}

impl ConsoleConfig {
    fn check(&self, field: &str) -> Result<(), ConfigError> {
        refuse_set(&format!("{field}.iommu"), &self.iommu)?;
        refuse_set(&format!("{field}.pci_segment"), &self.pci_segment)?;
        match self.mode {
            ConsoleMode::File if self.file.is_none() => {
                Err(invalid(format!("{field}.file"), "mode File needs a file"))
            }
            ConsoleMode::Socket
                if self.socket.as_deref().is_none_or(|s| s.as_os_str().is_empty()) =>
            {
                Err(invalid(format!("{field}.socket"), "mode Socket needs a socket path"))
            }
            // A Pty's `file` is where the pty was (vm.info reports it so): a new one replaces it.
            _ => Ok(()),
        }
    }
}

impl VmConfig {
    /// Checks everything that can be checked without opening a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_unsupported()?;
        let c = &self.cpus;
        if c.boot_vcpus == 0 || c.boot_vcpus > MAX_VCPUS {
            return Err(invalid(
                "cpus.boot_vcpus",
                format!("{} is not in 1..={MAX_VCPUS}", c.boot_vcpus),
            ));
        }
        if c.max_vcpus != c.boot_vcpus {
            return Err(unsupported(
                "cpus.max_vcpus",
                format!("{} with boot_vcpus {} (CPU hot-plug)", c.max_vcpus, c.boot_vcpus),
            ));
        }
        let u = c;
        for (name, v) in [
            ("cpus.topology", &u.topology),
            ("cpus.kvm_hyperv", &u.kvm_hyperv),
            ("cpus.max_phys_bits", &u.max_phys_bits),
            ("cpus.affinity", &u.affinity),
            ("cpus.features", &u.features),
        ] {
            refuse_set(name, v)?;
        }
        let m = &self.memory;
        if m.size < 2 << 20 || !m.size.is_multiple_of(4096) {
            return Err(invalid(
                "memory.size",
                format!("{} is not a multiple of 4 KiB of at least 2 MiB", m.size),
            ));
        }
        if let Some(h) = m.hugepage_size {
            if h != 2 << 20 && h != 1 << 30 {
                return Err(invalid(
                    "memory.hugepage_size",
                    format!("{h} is neither 2 MiB nor 1 GiB"),
                ));
            }
            if !m.hugepages {
                return Err(invalid("memory.hugepage_size", "set without hugepages"));
            }
        }
        if m.hugepages && m.shared {
            return Err(invalid("memory", "shared and hugepages together are not supported"));
        }
        let u = m;
        for (name, v) in [
            ("memory.hotplug_size", &u.hotplug_size),
            ("memory.hotplugged_size", &u.hotplugged_size),
            ("memory.prefault", &u.prefault),
            ("memory.reserve", &u.reserve),
            ("memory.zones", &u.zones),
        ] {
            refuse_set(name, v)?;
        }
        let p = &self.payload;
        if p.kernel.is_none() {
            return Err(invalid("payload.kernel", "a kernel is required"));
        }
        if p.firmware.is_some() {
            return Err(unsupported("payload.firmware", "booting firmware"));
        }
        if p.igvm.is_some() || p.host_data.is_some() {
            return Err(unsupported("payload.igvm", "IGVM/confidential payloads"));
        }
        for (i, d) in self.disks.iter().flatten().enumerate() {
            d.check(&format!("disks[{i}]"))?;
        }
        for (i, n) in self.net.iter().flatten().enumerate() {
            n.check(&format!("net[{i}]"))?;
        }
        self.serial.check("serial")?;
        if self.console.mode != ConsoleMode::Off {
            return Err(unsupported(
                "console.mode",
                format!("{:?} (hv has no virtio-console; use the serial port)", self.console.mode),
            ));
        }
        if self.pvpanic == Some(false) {
            return Err(unsupported("pvpanic", "false (hv-core always has a pvpanic port)"));
        }
        let devices = self.disks.iter().flatten().count() + self.net.iter().flatten().count();
        if devices > 16 {
            return Err(invalid("disks/net", format!("{devices} devices, at most 16 fit")));
        }
        Ok(())
    }
}

impl DiskConfig {
    fn check(&self, field: &str) -> Result<(), ConfigError> {
        if self.path.is_none() {
            return Err(invalid(format!("{field}.path"), "a path is required"));
        }
        match self.image_type {
            ImageType::Raw | ImageType::Qcow2 => {}
            other => {
                return Err(unsupported(
                    format!("{field}.image_type"),
                    format!("{other:?} (raw or qcow2)"),
                ))
            }
        }
        if self.num_queues == Some(0) {
            return Err(invalid(format!("{field}.num_queues"), "0 queues"));
        }
        if let Some(segments) = &self.segments {
            self.check_segments(field, segments)?;
        }
        let u = self;
        for (name, v) in [
            ("iommu", &u.iommu),
            ("vhost_user", &u.vhost_user),
            ("vhost_socket", &u.vhost_socket),
            ("rate_limiter_config", &u.rate_limiter_config),
            ("pci_segment", &u.pci_segment),
            ("rate_limit_group", &u.rate_limit_group),
            ("queue_affinity", &u.queue_affinity),
        ] {
            refuse_set(&format!("{field}.{name}"), v)?;
        }
        Ok(())
    }
}

impl DiskConfig {
    /// A logical volume's extents: a bounded, non-empty list of non-empty ranges of absolute
    /// paths whose ends and total fit in 64 bits; a raw disk opened through its extents only.
    fn check_segments(&self, field: &str, segments: &[DiskSegment]) -> Result<(), ConfigError> {
        let f = format!("{field}.segments");
        if segments.is_empty() || segments.len() > MAX_DISK_SEGMENTS {
            return Err(invalid(
                &f,
                format!("{} extents, want 1 to {MAX_DISK_SEGMENTS}", segments.len()),
            ));
        }
        if self.image_type != ImageType::Raw {
            return Err(unsupported(
                format!("{field}.image_type"),
                format!("{:?} with segments (a logical volume is raw)", self.image_type),
            ));
        }
        if self.backing_files {
            return Err(invalid(format!("{field}.backing_files"), "set with segments"));
        }
        if self.direct {
            return Err(unsupported(format!("{field}.direct"), "O_DIRECT with segments"));
        }
        let mut total = 0u64;
        for (i, s) in segments.iter().enumerate() {
            let sf = format!("{f}[{i}]");
            if !s.path.is_absolute() {
                return Err(invalid(
                    format!("{sf}.path"),
                    format!("{} is not absolute", s.path.display()),
                ));
            }
            if s.length == 0 {
                return Err(invalid(format!("{sf}.length"), "0 bytes"));
            }
            if s.offset.checked_add(s.length).is_none() {
                return Err(invalid(&sf, "offset + length overflows"));
            }
            total = total
                .checked_add(s.length)
                .ok_or_else(|| invalid(&sf, "the volume's size overflows"))?;
        }
        Ok(())
    }
}

impl NetConfig {
    fn check(&self, field: &str) -> Result<(), ConfigError> {
        if self.tap.as_deref().is_none_or(str::is_empty) {
            return Err(unsupported(
                format!("{field}.tap"),
                "a NIC without a TAP name (hv does not make and address TAPs itself)",
            ));
        }
        if let Some(mac) = &self.mac {
            mac.parse::<hv_net::MacAddr>()
                .map_err(|e| invalid(format!("{field}.mac"), e.to_string()))?;
        }
        match self.num_queues {
            Some(n)
                if n == 0
                    || n % 2 != 0
                    || usize::from(n / 2) > hv_net::virtio_net::MAX_QUEUE_PAIRS =>
            {
                return Err(invalid(
                    format!("{field}.num_queues"),
                    format!(
                        "{n} is not an even number of 2 to {}",
                        2 * hv_net::virtio_net::MAX_QUEUE_PAIRS
                    ),
                ))
            }
            _ => {}
        }
        if self.ip.as_deref().is_some_and(|ip| ip != DEFAULT_TAP_IP)
            || self.mask.as_deref().is_some_and(|m| m != DEFAULT_TAP_MASK)
        {
            return Err(unsupported(format!("{field}.ip"), "a host address on the TAP"));
        }
        let u = self;
        for (name, v) in [
            ("host_mac", &u.host_mac),
            ("mtu", &u.mtu),
            ("iommu", &u.iommu),
            ("vhost_user", &u.vhost_user),
            ("vhost_socket", &u.vhost_socket),
            ("pci_segment", &u.pci_segment),
            ("rate_limiter_config", &u.rate_limiter_config),
        ] {
            refuse_set(&format!("{field}.{name}"), v)?;
        }
        Ok(())
    }

    /// Queue pairs asked for.
    pub fn queue_pairs(&self) -> usize {
        usize::from(self.num_queues.unwrap_or(2) / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VmConfig, String> {
        serde_json::from_str::<VmConfig>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn refuses_typos_and_what_hv_cannot_do() {
        assert!(parse(r#"{"payload":{"kernel":"/k"},"cpu":{}}"#).unwrap_err().contains("cpu"));
        assert!(parse(r#"{"payload":{"kernal":"/k"}}"#).is_err());
        assert!(parse(r#"{"memory":{"size":1}}"#).unwrap_err().contains("payload"));
        assert!(parse(
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/d","image_type":"Qcow3"}]}"#
        )
        .is_err());
        for bad in [
            r#"{"payload":{}}"#,
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0,"max_vcpus":0}}"#,
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":4}}"#,
            r#"{"payload":{"kernel":"/k"},"memory":{"size":1000}}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"readonly":true}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/d","image_type":"Unknown"}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/d","vhost_user":true}]}"#,
            r#"{"payload":{"kernel":"/k"},"net":[{"mac":"52:54:00:00:00:01"}]}"#,
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t","mac":"zz"}]}"#,
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t","ip":"10.0.0.1"}]}"#,
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t","num_queues":3}]}"#,
            r#"{"payload":{"kernel":"/k"},"console":{"mode":"Tty"}}"#,
            r#"{"payload":{"kernel":"/k"},"serial":{"mode":"File"}}"#,
            r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Socket"}}"#,
            r#"{"payload":{"kernel":"/k"},"console":{"mode":"Pty"}}"#,
            r#"{"payload":{"kernel":"/k"},"vsock":{"cid":3,"socket":"/v"}}"#,
            r#"{"payload":{"kernel":"/k"},"platform":{"tdx":true}}"#,
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":1,"features":{"amx":true}}}"#,
            r#"{"payload":{"kernel":"/k","firmware":"/f"}}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","segments":[]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"segments":[{"path":"/p","offset":0,"length":1}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","segments":[{"path":"p","offset":0,"length":1}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","segments":[{"path":"/p","offset":0,"length":0}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","segments":[{"path":"/p","offset":18446744073709551615,"length":1}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","segments":[{"path":"/p","offset":0,"length":18446744073709551615},{"path":"/p","offset":0,"length":1}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","image_type":"Qcow2","segments":[{"path":"/p","offset":0,"length":1}]}]}"#,
            r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/v","direct":true,"segments":[{"path":"/p","offset":0,"length":1}]}]}"#,
        ] {
            let c = parse(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_are_checked_and_bounded() {
        let seg = r#"{"path":"/pv","offset":4096,"length":1048576}"#;
        let body = |segs: &str| {
            format!(
                r#"{{"payload":{{"kernel":"/k"}},"disks":[{{"path":"/dev/vg/lv","segments":[{segs}]}}]}}"#
            )
        };
        let ok = parse(&body(&format!("{seg},{seg}"))).unwrap();
        ok.validate().unwrap();
        let segs = ok.disks.as_ref().unwrap()[0].segments.as_ref().unwrap();
        assert_eq!((segs.len(), segs[1].offset, segs[1].length), (2, 4096, 1 << 20));
        // vm.info shows them and they read back (snapshots and migrations carry the config).
        let again: VmConfig = serde_json::from_value(serde_json::to_value(&ok).unwrap()).unwrap();
        assert_eq!(again, ok);
        let many = vec![seg; MAX_DISK_SEGMENTS + 1].join(",");
        let err = parse(&body(&many)).unwrap().validate().unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { field, .. } if field == "disks[0].segments"));
        let err = parse(&body(r#"{"path":"/p","offset":0,"length":0}"#)).unwrap().validate();
        assert!(
            matches!(&err, Err(ConfigError::Invalid { field, .. }) if field == "disks[0].segments[0].length"),
            "{err:?}"
        );
        assert!(parse(&body(r#"{"path":"/p","offset":0,"length":1,"x":1}"#)).is_err());
        assert!(parse(&body(r#"{"path":"/p","offset":-1,"length":1}"#)).is_err());
    }
}
