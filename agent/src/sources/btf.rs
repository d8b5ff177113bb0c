//! Just enough of a BTF reader to find where a field lives in a kernel struct: the per-cgroup
//! counters need the offsets of `sock.__sk_common.skc_state`, `sock.sk_cgrp_data.cgroup`,
//! `cgroup.kn` and `kernfs_node.id` to name a socket's owner, and aya cannot emit CO-RE
//! relocations. The offsets are read from the running kernel's /sys/kernel/btf/vmlinux at load
//! time and handed to the programs as a global, so the object works on any kernel with BTF. The
//! per-namespace TCP balance needs the path from a socket to its namespace's /proc/net/stat
//! directory inode the same way.
//! Malformed BTF is an error, never a panic.
use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    Header,
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown BTF kind {0}")]
    Kind(u32),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("no field {field} in struct {within}")]
    NoField { within: String, field: String },
    #[error("field {0} is a bitfield or not byte-aligned")]
    Unaligned(String),
    #[error("field {field} is not {want}")]
    Type { field: String, want: &'static str },
}

/// One type: its kind, name, size-or-type word, and where its members start in the data.
#[derive(Debug, Clone, Copy)]
struct Ty {
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    name_off: u32,
    size_or_type: u32,
    extra: usize,
}

/// A parsed BTF blob (types only; borrowed bytes).
pub struct Btf<'a> {
    types: Vec<Ty>,
    data: &'a [u8],
    strings: &'a [u8],
    structs: HashMap<&'a str, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Truncated(at))
}

impl<'a> Btf<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Self, BtfError> {
        if raw.len() < 24 || u16::from_le_bytes([raw[0], raw[1]]) != MAGIC {
            return Err(BtfError::Header);
        }
        let hdr_len = u32_at(raw, 4)? as usize;
        let (type_off, type_len) = (u32_at(raw, 8)? as usize, u32_at(raw, 12)? as usize);
        let (str_off, str_len) = (u32_at(raw, 16)? as usize, u32_at(raw, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Header)?;
            let end = start.checked_add(len).ok_or(BtfError::Header)?;
            raw.get(start..end).ok_or(BtfError::Truncated(start))
        };
        let data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        // Type id 0 is void; ids start at 1.
        let mut types = vec![Ty { kind: 0, kind_flag: false, vlen: 0, name_off: 0, size_or_type: 0, extra: 0 }];
        let mut at = 0;
        while at < data.len() {
            let name_off = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            let size_or_type = u32_at(data, at + 8)?;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31 == 1);
            let extra = at + 12;
            let trailing = match kind {
                KIND_INT | 14 | 17 => 4,                                  // int, var, decl_tag
                3 => 12,                                                  // array
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen as usize, // members, datasec, enum64
                6 | 13 => 8 * vlen as usize,                              // enum, func_proto
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Kind(other)),
            };
            at = extra + trailing;
            if at > data.len() {
                return Err(BtfError::Truncated(at));
            }
            types.push(Ty { kind, kind_flag, vlen, name_off, size_or_type, extra });
        }
        let mut btf = Btf { types, data, strings, structs: HashMap::new() };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.vlen > 0 {
                if let Some(name) = btf.name(ty.name_off) {
                    btf.structs.entry(name).or_insert(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Option<&'a str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn ty(&self, id: u32) -> Result<Ty, BtfError> {
        self.types.get(id as usize).copied().ok_or(BtfError::Truncated(id as usize))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<Ty, BtfError> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = ty.size_or_type,
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Kind(KIND_TYPEDEF))
    }

    /// Finds member `field` of the struct or union `ty`, looking inside anonymous members too:
    /// returns its offset in bits and its type id.
    fn member(&self, ty: Ty, field: &str) -> Result<Option<(u32, u32)>, BtfError> {
        for m in 0..ty.vlen as usize {
            let at = ty.extra + 12 * m;
            let (name_off, member_ty, offset) =
                (u32_at(self.data, at)?, u32_at(self.data, at + 4)?, u32_at(self.data, at + 8)?);
            let bits = if ty.kind_flag { offset & 0x00ff_ffff } else { offset };
            if ty.kind_flag && offset >> 24 != 0 && self.name(name_off) == Some(field) {
                return Err(BtfError::Unaligned(field.to_owned()));
            }
            match self.name(name_off) {
                Some(name) if name == field => return Ok(Some((bits, member_ty))),
                Some("") | None => {
                    let inner = self.resolve(member_ty)?;
                    if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                        if let Some((b, t)) = self.member(inner, field)? {
                            return Ok(Some((bits + b, t)));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (fields, outermost first) inside struct `name`, and the resolved
    /// kind and size of the last field.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Result<(u32, FieldType), BtfError> {
        let id = *self.structs.get(name).ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut ty = self.ty(id)?;
        let mut bits = 0u32;
        let mut within = name.to_owned();
        let mut last = FieldType::Other;
        for field in path {
            if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
                return Err(BtfError::NoField { within, field: (*field).to_owned() });
            }
            let (b, member_ty) = self
                .member(ty, field)?
                .ok_or_else(|| BtfError::NoField { within: within.clone(), field: (*field).to_owned() })?;
            bits += b;
            ty = self.resolve(member_ty)?;
            last = match ty.kind {
                KIND_PTR => FieldType::Pointer,
                KIND_INT => FieldType::Int { bytes: ty.size_or_type },
                _ => FieldType::Other,
            };
            within = (*field).to_owned();
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Unaligned(path.join(".")));
        }
        Ok((bits / 8, last))
    }
}

impl Btf<'_> {
    /// [`Btf::offset_of`], checking that the field is of type `want`.
    pub fn typed_offset(&self, name: &str, path: &[&str], want: FieldType) -> Result<u32, BtfError> {
        let (offset, ty) = self.offset_of(name, path)?;
        if ty != want {
            let want = match want {
                FieldType::Pointer => "a pointer",
                FieldType::Int { bytes: 1 } => "a 1-byte integer",
                FieldType::Int { bytes: 4 } => "a 4-byte integer",
                FieldType::Int { bytes: 8 } => "a 64-bit integer",
                _ => "another type",
            };
            return Err(BtfError::Type { field: format!("{name}.{}", path.join(".")), want });
        }
        Ok(offset)
    }
}

/// What a field is, as far as the offsets need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Pointer,
    Int { bytes: u32 },
    Other,
}

/// The offsets the eBPF programs need to read a socket's owning cgroup id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwnerOffsets {
    pub sk_state: u32,
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_id: u32,
}

/// The offsets that lead from the running task to its cgroup v2: `task_struct.cgroups` and
/// `css_set.dfl_cgrp` (then `cgroup.kn` and `kernfs_node.id`, as for sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCgroupOffsets {
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
}

/// Reads the task-path offsets from a kernel's BTF.
pub fn task_cgroup_offsets(raw: &[u8]) -> Result<TaskCgroupOffsets, BtfError> {
    let btf = Btf::parse(raw)?;
    Ok(TaskCgroupOffsets {
        task_cgroups: btf.typed_offset("task_struct", &["cgroups"], FieldType::Pointer)?,
        css_set_dfl_cgrp: btf.typed_offset("css_set", &["dfl_cgrp"], FieldType::Pointer)?,
    })
}

/// The offsets that lead from a socket to its network namespace key (agent-common's
/// `NetnsKeying`): `sock.__sk_common.skc_net.net`, `net.proc_net_stat`, `proc_dir_entry.low_ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketNetnsOffsets {
    pub sk_net: u32,
    pub net_proc_net_stat: u32,
    pub pde_low_ino: u32,
}

/// Reads the namespace-key offsets from a kernel's BTF, checking each field's type.
pub fn socket_netns_offsets(raw: &[u8]) -> Result<SocketNetnsOffsets, BtfError> {
    let btf = Btf::parse(raw)?;
    Ok(SocketNetnsOffsets {
        sk_net: btf.typed_offset("sock", &["__sk_common", "skc_net", "net"], FieldType::Pointer)?,
        net_proc_net_stat: btf.typed_offset("net", &["proc_net_stat"], FieldType::Pointer)?,
        pde_low_ino: btf.typed_offset("proc_dir_entry", &["low_ino"], FieldType::Int { bytes: 4 })?,
    })
}

/// Reads the offsets from a kernel's BTF, checking each field has the type the programs read.
pub fn socket_owner_offsets(raw: &[u8]) -> Result<SocketOwnerOffsets, BtfError> {
    let btf = Btf::parse(raw)?;
    Ok(SocketOwnerOffsets {
        sk_state: btf.typed_offset("sock", &["__sk_common", "skc_state"], FieldType::Int { bytes: 1 })?,
        sk_cgroup: btf.typed_offset("sock", &["sk_cgrp_data", "cgroup"], FieldType::Pointer)?,
        cgroup_kn: btf.typed_offset("cgroup", &["kn"], FieldType::Pointer)?,
        kernfs_id: btf.typed_offset("kernfs_node", &["id"], FieldType::Int { bytes: 8 })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; union { struct inner *p; }; }` and
    /// `struct inner { long long id; }`, built by hand.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0p\0inner\0id\0long long\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = [name.as_bytes(), b"\0"].concat();
            (1..strings.len()).find(|&i| strings[i - 1] == 0 && strings[i..].starts_with(&needle)).unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { long long id; } (id of type 6)
        push(&[s("inner"), KIND_STRUCT << 24 | 1, 8, s("id"), 6, 0]);
        // 3: pointer to 2
        push(&[0, KIND_PTR << 24, 2]);
        // 4: anonymous union { struct inner *p; }
        push(&[0, KIND_UNION << 24 | 1, 8, s("p"), 3, 0]);
        // 5: struct outer { int a; <anon union> at bit 64 }
        push(&[s("outer"), KIND_STRUCT << 24 | 2, 16, s("a"), 1, 0, 0, 4, 64]);
        // 6: long long (8 bytes)
        push(&[s("long long"), KIND_INT << 24, 8, 64]);
        let mut raw = Vec::new();
        raw.extend_from_slice(&MAGIC.to_le_bytes());
        raw.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        raw.extend_from_slice(&types);
        raw.extend_from_slice(&strings);
        raw
    }

    #[test]
    fn finds_fields_through_anonymous_unions() {
        let raw = blob();
        let btf = Btf::parse(&raw).unwrap();
        assert_eq!(btf.offset_of("outer", &["a"]).unwrap(), (0, FieldType::Int { bytes: 4 }));
        assert_eq!(btf.offset_of("outer", &["p"]).unwrap(), (8, FieldType::Pointer));
        assert_eq!(btf.offset_of("inner", &["id"]).unwrap(), (0, FieldType::Int { bytes: 8 }));
        assert!(matches!(btf.offset_of("outer", &["nope"]), Err(BtfError::NoField { .. })));
        assert!(matches!(btf.offset_of("sock", &["x"]), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn malformed_btf_is_an_error_not_a_panic() {
        let raw = blob();
        for cut in 0..raw.len() {
            let _ = Btf::parse(&raw[..cut]);
        }
        let mut bad = raw.clone();
        bad[31] = 0x1f; // the top byte of the first type's info word: kind 31, unknown
        assert!(Btf::parse(&bad).is_err());
        assert_eq!(Btf::parse(b"not btf at all, not btf at all").err(), Some(BtfError::Header));
    }

    /// The running kernel's BTF holds every field the socket-owner lookup reads.
    #[test]
    fn the_running_kernel_has_the_socket_owner_fields() {
        let Ok(raw) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("/sys/kernel/btf/vmlinux is unreadable: the agent's per-cgroup TCP counts need kernel BTF");
        };
        let o = socket_owner_offsets(&raw).unwrap();
        assert!(o.sk_cgroup > o.sk_state, "{o:?}");
        assert!(o.kernfs_id > 0 && o.cgroup_kn > 0, "{o:?}");
        let t = task_cgroup_offsets(&raw).unwrap();
        assert!(t.task_cgroups > 0, "{t:?}");
        let n = socket_netns_offsets(&raw).unwrap();
        assert!(n.sk_net > 0 && n.net_proc_net_stat > 0 && n.pde_low_ino > 0, "{n:?}");
    }
}
