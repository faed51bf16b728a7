//! Struct member offsets from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, and kernel structs (`sock`, `sk_buff`, `task_struct`, …)
//! change layout between versions and configs. So the agent reads the running kernel's BTF, finds
//! the few offsets the probes need, and hands them to the programs as a load-time global. Only the
//! parts of the format needed for that are parsed (type section and string section; see
//! Documentation/bpf/btf.rst).

use std::{borrow::Cow, collections::HashMap};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or truncated header)")]
    Header,
    #[error("BTF type section is truncated at type {0}")]
    Truncated(u32),
    #[error("BTF kind {kind} of type {id} is unknown to this parser")]
    UnknownKind { id: u32, kind: u32 },
    #[error("struct {0} is not in this kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in this kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    ty: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// The referenced type for typedef/const/volatile/restrict/type_tag.
    ty: u32,
    members: Vec<Member>,
}

/// The parsed type graph: enough to resolve struct member offsets.
pub struct Btf<'a> {
    strings: &'a [u8],
    /// Index = type id (0 is void).
    types: Vec<Type>,
    structs: HashMap<Cow<'a, str>, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Header);
        }
        let hdr_len = u32_at(data, 4).ok_or(BtfError::Header)? as usize;
        let type_off = u32_at(data, 8).ok_or(BtfError::Header)? as usize;
        let type_len = u32_at(data, 12).ok_or(BtfError::Header)? as usize;
        let str_off = u32_at(data, 16).ok_or(BtfError::Header)? as usize;
        let str_len = u32_at(data, 20).ok_or(BtfError::Header)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Header)
        };
        let tdata = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        let void = Type {
            name_off: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        };
        let mut types = vec![void];
        let mut pos = 0usize;
        while pos < tdata.len() {
            let id = types.len() as u32;
            let name_off = u32_at(tdata, pos).ok_or(BtfError::Truncated(id))?;
            let info = u32_at(tdata, pos + 4).ok_or(BtfError::Truncated(id))?;
            let size_or_type = u32_at(tdata, pos + 8).ok_or(BtfError::Truncated(id))?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let at = pos + m * 12;
                        let name_off = u32_at(tdata, at).ok_or(BtfError::Truncated(id))?;
                        let ty = u32_at(tdata, at + 4).ok_or(BtfError::Truncated(id))?;
                        let off = u32_at(tdata, at + 8).ok_or(BtfError::Truncated(id))?;
                        // With kind_flag the top 8 bits are a bitfield size.
                        let bit_offset = if kind_flag { off & 0x00ff_ffff } else { off };
                        members.push(Member {
                            name_off,
                            ty,
                            bit_offset,
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            pos += extra;
            if pos > tdata.len() {
                return Err(BtfError::Truncated(id));
            }
            types.push(Type {
                name_off,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Self {
            strings,
            types,
            structs: HashMap::new(),
        };
        let mut structs = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                structs.entry(btf.name(t.name_off)).or_insert(id as u32);
            }
        }
        btf.structs = structs;
        Ok(btf)
    }

    fn name(&self, off: u32) -> Cow<'a, str> {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of member `name` in struct/union `id`, searching anonymous members too.
    fn find(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        for m in &t.members {
            if m.name_off != 0 && self.name(m.name_off) == name {
                return Some((m.bit_offset, m.ty));
            }
        }
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            if let Some((off, ty)) = self.find(m.ty, name) {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Byte offset of `path` (nested member names) inside `struct <strukt>`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut bits = 0;
        for member in path {
            let (off, ty) = self.find(id, member).ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: path.join("."),
            })?;
            bits += off;
            id = ty;
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { long x; union { int y; struct inner in; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0x\0outer\0y\0in\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (size 4) + 4 bytes of int data
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[
            s("inner"),
            KIND_STRUCT << 24 | 2,
            8,
            s("a"),
            1,
            0,
            s("b"),
            1,
            32,
        ]);
        // 3: anonymous union { y @0, in @0 }
        push(&[0, KIND_UNION << 24 | 2, 8, s("y"), 1, 0, s("in"), 2, 0]);
        // 4: struct outer { x @0, <anon union> @64 }
        push(&[
            s("outer"),
            KIND_STRUCT << 24 | 2,
            16,
            s("x"),
            1,
            0,
            0,
            3,
            64,
        ]);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_nested_structs() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset("outer", &["x"]), Ok(0));
        assert_eq!(btf.offset("outer", &["y"]), Ok(8));
        assert_eq!(btf.offset("outer", &["in", "b"]), Ok(12));
        assert_eq!(
            btf.offset("outer", &["nope"]),
            Err(BtfError::NoMember {
                strukt: "outer".into(),
                member: "nope".into()
            })
        );
        assert_eq!(
            btf.offset("missing", &["x"]),
            Err(BtfError::NoStruct("missing".into()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Btf::parse(b"nope").err(), Some(BtfError::Header));
        let mut data = blob();
        data.truncate(40);
        assert!(Btf::parse(&data).is_err());
    }

    #[test]
    fn this_kernels_btf_has_the_offsets_the_probes_need() {
        // Every machine this project builds and tests on has BTF (README, Requirements); a kernel
        // without it fails this test loudly rather than skipping it.
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset("sock", &["__sk_common", "skc_family"]), Ok(16));
        assert!(btf.offset("sk_buff", &["dev"]).is_ok());
        assert!(btf.offset("net", &["ns", "inum"]).is_ok());
        assert!(btf.offset("task_struct", &["nsproxy"]).is_ok());
    }
}
