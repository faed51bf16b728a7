//! Programming IPVS the way kube-proxy does. The agent never writes to IPVS: this is for the
//! check on a real kernel (`cargo xtask ipvs-vm`, the IPVS guest harness) that programs
//! kube-proxy's virtual and real servers and records what the kernel then dumps, and for tests.

use netlink_packet_core::NLM_F_REQUEST;

use super::{
    Live, ReadError, RealServer, VirtualServer,
    wire::{
        IPVS_CMD_ATTR_DEST, IPVS_CMD_ATTR_SERVICE, IPVS_CMD_NEW_DEST, IPVS_CMD_NEW_SERVICE,
        IPVS_DEST_ATTR_ADDR, IPVS_DEST_ATTR_ADDR_FAMILY, IPVS_DEST_ATTR_PORT,
        IPVS_DEST_ATTR_WEIGHT, NLA_F_NESTED, VERSION, addr16, decode_datagram, family_of, nla,
        service_attr, service_id,
    },
};
use crate::dataplane::model::Backend;

use zdt_common::genl::{IPVS_CMD_DEL_DEST, IPVS_CMD_SET_DEST};
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
/// IP_VS_CONN_F_MASQ: kube-proxy's forwarding method (NAT).
const IP_VS_CONN_F_MASQ: u32 = 0;
const NLM_F_ACK: u16 = 4;

/// One change kube-proxy's IPVS mode makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A virtual server with this scheduler (`rr` by default in kube-proxy).
    NewService(VirtualServer, &'static str),
    /// A real server, masquerading (kube-proxy's forwarding method).
    NewDest(VirtualServer, RealServer),
    /// A new weight for a real server (0 = draining, for a terminating endpoint).
    SetDest(VirtualServer, RealServer),
    /// A real server removed.
    DelDest(VirtualServer, Backend),
}

/// The nested `IPVS_CMD_ATTR_DEST` of a real server; with a weight it also carries what
/// NEW_DEST/SET_DEST require (forwarding method, thresholds).
fn dest_attr(backend: Backend, weight: Option<u32>) -> Vec<u8> {
    let ip = backend.0.ip();
    let mut d = nla(IPVS_DEST_ATTR_ADDR, &addr16(ip));
    d.extend(nla(IPVS_DEST_ATTR_PORT, &backend.0.port().to_be_bytes()));
    if let Some(weight) = weight {
        d.extend(nla(
            IPVS_DEST_ATTR_FWD_METHOD,
            &IP_VS_CONN_F_MASQ.to_ne_bytes(),
        ));
        d.extend(nla(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes()));
        d.extend(nla(IPVS_DEST_ATTR_U_THRESH, &0u32.to_ne_bytes()));
        d.extend(nla(IPVS_DEST_ATTR_L_THRESH, &0u32.to_ne_bytes()));
    }
    d.extend(nla(
        IPVS_DEST_ATTR_ADDR_FAMILY,
        &family_of(ip).to_ne_bytes(),
    ));
    nla(IPVS_CMD_ATTR_DEST | NLA_F_NESTED, &d)
}

/// One change as the kernel expects it: nlmsghdr (request, ack wanted), genlmsghdr, attributes.
pub fn encode_command(command: &Command, family_id: u16, seq: u32) -> Vec<u8> {
    let (cmd, attrs) = match command {
        Command::NewService(vs, scheduler) => {
            let mut svc = service_id(vs);
            let mut name = scheduler.as_bytes().to_vec();
            name.push(0);
            svc.extend(nla(IPVS_SVC_ATTR_SCHED_NAME, &name));
            // struct ip_vs_flags { flags, mask }: no flags set, all of them given.
            let mut flags = 0u32.to_ne_bytes().to_vec();
            flags.extend(u32::MAX.to_ne_bytes());
            svc.extend(nla(IPVS_SVC_ATTR_FLAGS, &flags));
            svc.extend(nla(IPVS_SVC_ATTR_TIMEOUT, &0u32.to_ne_bytes()));
            let netmask: u32 = if vs.service.0.is_ipv4() {
                u32::MAX
            } else {
                128
            };
            svc.extend(nla(IPVS_SVC_ATTR_NETMASK, &netmask.to_ne_bytes()));
            (
                IPVS_CMD_NEW_SERVICE,
                nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &svc),
            )
        }
        Command::NewDest(vs, rs) | Command::SetDest(vs, rs) => {
            let mut a = service_attr(vs);
            a.extend(dest_attr(rs.backend, Some(rs.weight)));
            let cmd = if matches!(command, Command::NewDest(..)) {
                IPVS_CMD_NEW_DEST
            } else {
                IPVS_CMD_SET_DEST
            };
            (cmd, a)
        }
        Command::DelDest(vs, backend) => {
            let mut a = service_attr(vs);
            a.extend(dest_attr(*backend, None));
            (IPVS_CMD_DEL_DEST, a)
        }
    };
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&family_id.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, VERSION, 0, 0]);
    m.extend_from_slice(&attrs);
    m
}

/// `sendmsg` of `bytes` in one `iovec` on a netlink socket, to the kernel (no address), as
/// libnl sends (ipvsadm, keepalived); the bytes sent.
pub fn sendmsg_one_iovec(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; no address: the socket's peer is the kernel.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at `iov`, which points at `bytes`, all alive for the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

impl Live {
    /// Makes one change to IPVS, as kube-proxy does (`ipvsadm -A/-a/-e/-d`), and waits for the
    /// kernel's acknowledgement.
    pub fn execute(&mut self, command: &Command) -> Result<(), ReadError> {
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode_command(command, self.family_id, self.seq), 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        // The acknowledgement is an NLMSG_ERROR with code 0; an error code is returned as such.
        decode_datagram(&self.buf[..n]).map(|_| ())
    }

    /// The same change sent as libnl sends it (ipvsadm, keepalived): `sendmsg` with the whole
    /// request in one `iovec`.
    pub fn execute_by_sendmsg(&mut self, command: &Command) -> Result<(), ReadError> {
        use std::os::fd::AsFd as _;
        self.seq = self.seq.wrapping_add(1);
        let request = encode_command(command, self.family_id, self.seq);
        sendmsg_one_iovec(self.socket.as_fd(), &request)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        decode_datagram(&self.buf[..n]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ipvs::{
        tests::web,
        wire::{AF_INET, IPVS_DEST_ATTR_WEIGHT, nested, parse_dest, parse_service, u32_ne},
    };

    /// The attributes after nlmsghdr + genlmsghdr of an encoded command, and its command byte.
    fn command_parts(bytes: &[u8]) -> (u8, u16, &[u8]) {
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len());
        let flags = u16::from_ne_bytes(bytes[6..8].try_into().unwrap());
        (bytes[16], flags, &bytes[20..])
    }

    #[test]
    fn kube_proxys_changes_are_encoded_with_what_the_kernel_requires() {
        let backend = RealServer {
            backend: Backend("10.244.0.36:8080".parse().unwrap()),
            weight: 0,
        };
        let set = encode_command(&Command::SetDest(web(), backend), 0x1c, 7);
        let (cmd, flags, attrs) = command_parts(&set);
        assert_eq!((cmd, flags), (IPVS_CMD_SET_DEST, NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(parse_service(attrs), Ok(Some(web())));
        let dest = parse_dest(attrs).unwrap();
        assert_eq!(dest.resolve(AF_INET), Ok(backend));
        let d = nested(attrs, IPVS_CMD_ATTR_DEST).unwrap();
        for required in [
            IPVS_DEST_ATTR_FWD_METHOD,
            IPVS_DEST_ATTR_U_THRESH,
            IPVS_DEST_ATTR_L_THRESH,
        ] {
            assert!(nested(d, required).is_some(), "attribute {required}");
        }
        assert_eq!(
            nested(d, IPVS_DEST_ATTR_FWD_METHOD).and_then(u32_ne),
            Some(IP_VS_CONN_F_MASQ)
        );

        let del = encode_command(&Command::DelDest(web(), backend.backend), 0x1c, 8);
        let (cmd, _, attrs) = command_parts(&del);
        assert_eq!(cmd, IPVS_CMD_DEL_DEST);
        let d = nested(attrs, IPVS_CMD_ATTR_DEST).unwrap();
        assert!(nested(d, IPVS_DEST_ATTR_WEIGHT).is_none());

        let new = encode_command(&Command::NewService(web(), "rr"), 0x1c, 9);
        let (cmd, _, attrs) = command_parts(&new);
        assert_eq!(cmd, IPVS_CMD_NEW_SERVICE);
        assert_eq!(parse_service(attrs), Ok(Some(web())));
        let svc = nested(attrs, IPVS_CMD_ATTR_SERVICE).unwrap();
        assert_eq!(nested(svc, IPVS_SVC_ATTR_SCHED_NAME), Some(&b"rr\0"[..]));
        assert_eq!(
            nested(svc, IPVS_SVC_ATTR_NETMASK).and_then(u32_ne),
            Some(u32::MAX)
        );
        assert_eq!(nested(svc, IPVS_SVC_ATTR_FLAGS).map(<[u8]>::len), Some(8));
        assert!(nested(svc, IPVS_SVC_ATTR_TIMEOUT).is_some());
    }
}
