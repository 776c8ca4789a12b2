//! Persistent domain definitions on disk: `DIR/domains/NAME.xml` (libvirt domain XML, written
//! crash-safely) and `DIR/autostart/NAME` markers, like libvirt's `/etc/libvirt/qemu`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{DomainDef, DomainName, XmlError};
use crate::error::{io_err, HostError, Result};
use crate::persist;

/// The definitions of one host's domains.
#[derive(Debug)]
pub struct DomainStore {
    dir: PathBuf,
    autostart: PathBuf,
    defs: BTreeMap<DomainName, DomainDef>,
}

/// What [`DomainStore::define`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defined {
    /// A new domain.
    New,
    /// An existing domain (same name and UUID) got a new definition.
    Updated,
}

impl DomainStore {
    /// Opens (creating if needed) the store under `state_dir`, reading every definition.
    ///
    /// A definition file that does not parse is an error naming it: the host never runs with
    /// part of its domains silently missing.
    pub fn open(state_dir: &Path) -> Result<DomainStore> {
        let dir = state_dir.join("domains");
        let autostart = state_dir.join("autostart");
        for d in [&dir, &autostart] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        persist::clean_temp_files(&dir);
        let mut defs = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
            let def = DomainDef::from_xml(&text)
                .map_err(|source| HostError::CorruptDefinition { path: path.clone(), source })?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if stem != def.name.as_str() {
                return Err(HostError::CorruptDefinition {
                    path: path.clone(),
                    source: XmlError::Syntax(format!(
                        "file name does not match <name>{}</name>",
                        def.name
                    )),
                });
            }
            defs.insert(def.name.clone(), def);
        }
        Ok(DomainStore { dir, autostart, defs })
    }

    fn path_of(&self, name: &DomainName) -> PathBuf {
        self.dir.join(format!("{name}.xml"))
    }

    /// Stores `def`, new or replacing the definition of the same name and UUID (libvirt's
    /// `define` rules: a name taken by another UUID, or a UUID taken by another name, is refused).
    pub fn define(&mut self, def: DomainDef) -> Result<Defined> {
        def.validate().map_err(|e| HostError::Xml(e.into()))?;
        if let Some(other) = self.defs.values().find(|d| d.uuid == def.uuid && d.name != def.name) {
            return Err(HostError::UuidInUse { uuid: def.uuid, name: other.name.clone() });
        }
        let outcome = match self.defs.get(&def.name) {
            Some(old) if old.uuid != def.uuid => {
                return Err(HostError::NameInUse { name: def.name.clone(), uuid: old.uuid })
            }
            Some(_) => Defined::Updated,
            None => Defined::New,
        };
        let path = self.path_of(&def.name);
        persist::write_atomic(&path, def.to_xml().as_bytes()).map_err(io_err("write", &path))?;
        self.defs.insert(def.name.clone(), def);
        Ok(outcome)
    }

    /// Removes a definition (and its autostart mark).
    pub fn undefine(&mut self, name: &DomainName) -> Result<DomainDef> {
        if !self.defs.contains_key(name) {
            return Err(HostError::NoDomain(name.to_string()));
        }
        self.set_autostart(name, false)?;
        let path = self.path_of(name);
        persist::remove_durable(&path).map_err(io_err("remove", &path))?;
        Ok(self.defs.remove(name).expect("checked above"))
    }

    /// The definition of `name`.
    pub fn get(&self, name: &DomainName) -> Result<&DomainDef> {
        self.defs.get(name).ok_or_else(|| HostError::NoDomain(name.to_string()))
    }

    /// Finds a domain by name, UUID or (later) id, as virsh accepts any of them.
    pub fn lookup(&self, key: &str) -> Result<&DomainDef> {
        if let Ok(name) = key.parse::<DomainName>() {
            if let Some(d) = self.defs.get(&name) {
                return Ok(d);
            }
        }
        if let Ok(uuid) = Uuid::parse_str(key) {
            if let Some(d) = self.defs.values().find(|d| d.uuid == uuid) {
                return Ok(d);
            }
        }
        Err(HostError::NoDomain(key.to_string()))
    }

    /// Every definition, by name.
    pub fn list(&self) -> impl Iterator<Item = &DomainDef> {
        self.defs.values()
    }

    /// Marks or unmarks `name` to start when the host daemon starts.
    pub fn set_autostart(&self, name: &DomainName, on: bool) -> Result<()> {
        self.get(name)?;
        let mark = self.autostart.join(name.as_str());
        if on {
            persist::write_atomic(&mark, b"").map_err(io_err("write", &mark))
        } else {
            persist::remove_durable(&mark).map_err(io_err("remove", &mark))
        }
    }

    /// Whether `name` starts with the host daemon.
    pub fn autostart(&self, name: &DomainName) -> bool {
        self.autostart.join(name.as_str()).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, uuid: &str) -> DomainDef {
        DomainDef::from_xml(&format!(
            "<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>"
        ))
        .unwrap()
    }

    const U1: &str = "11111111-1111-4111-8111-111111111111";
    const U2: &str = "22222222-2222-4222-8222-222222222222";

    #[test]
    fn definitions_survive_reopen_and_follow_libvirt_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DomainStore::open(dir.path()).unwrap();
        assert_eq!(s.define(def("a", U1)).unwrap(), Defined::New);
        assert_eq!(s.define(def("a", U1)).unwrap(), Defined::Updated);
        assert!(matches!(s.define(def("a", U2)), Err(HostError::NameInUse { .. })));
        assert!(matches!(s.define(def("b", U1)), Err(HostError::UuidInUse { .. })));
        s.define(def("b", U2)).unwrap();
        s.set_autostart(&"b".parse().unwrap(), true).unwrap();
        let s = DomainStore::open(dir.path()).unwrap();
        let names: Vec<_> = s.list().map(|d| d.name.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(s.autostart(&"b".parse().unwrap()));
        assert!(!s.autostart(&"a".parse().unwrap()));
        assert_eq!(s.lookup(U2).unwrap().name.as_str(), "b");
        assert!(matches!(s.lookup("zzz"), Err(HostError::NoDomain(_))));
    }

    #[test]
    fn undefine_removes_file_and_autostart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DomainStore::open(dir.path()).unwrap();
        s.define(def("a", U1)).unwrap();
        let a = "a".parse().unwrap();
        s.set_autostart(&a, true).unwrap();
        s.undefine(&a).unwrap();
        assert!(matches!(s.undefine(&a), Err(HostError::NoDomain(_))));
        let s = DomainStore::open(dir.path()).unwrap();
        assert_eq!(s.list().count(), 0);
        assert!(!s.autostart(&a));
    }

    #[test]
    fn a_corrupt_definition_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        DomainStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("domains/x.xml"), "<domain").unwrap();
        let e = DomainStore::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("x.xml"), "{e}");
    }
}
