//! Phase B, credentials, per thread (each thread has its own): groups, uids
//! and gids (real, effective, saved, file system), and the capability sets
//! (effective, permitted, inheritable, bounding, ambient) with the
//! securebits. Every thread starts as root with all capabilities (a copy
//! of crt), and gets there from inside in an order the kernel allows:
//!
//! 1. securebits `NO_SETUID_FIXUP`, so changing uids keeps the capabilities;
//! 2. the bounding set lowered (`PR_CAPBSET_DROP`);
//! 3. groups, gids, uids, then the file system ids;
//! 4. permitted, effective, inheritable (`capset`), keeping `CAP_SETPCAP`;
//! 5. ambient capabilities raised;
//! 6. the dumped securebits (needs `CAP_SETPCAP`), then the final `capset`.
//!
//! The result is read back from `/proc` and compared, so a difference is
//! an error naming the attribute.

use super::RestoreError;
use crate::images::pb;
use crate::puppet::Puppet;

const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const PR_CAPBSET_DROP: u64 = 24;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const CAP_SETPCAP: u64 = 8;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The securebits of the thread `p` drives (read from inside).
pub fn securebits(p: &mut Puppet) -> Result<u32, crate::puppet::PuppetError> {
    Ok(p.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])? as u32)
}

/// The credentials of thread `tid` as `/proc` shows them.
fn current(tid: i32) -> Result<pb::Creds, RestoreError> {
    Ok(crate::task_state::read_creds(tid)?)
}

/// What differs between two credentials, for messages.
fn differences(want: &pb::Creds, have: &pb::Creds) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{what} {b} instead of {a}"));
        }
    };
    cmp("uids", format!("{:?}", want.uids), format!("{:?}", have.uids));
    cmp("gids", format!("{:?}", want.gids), format!("{:?}", have.gids));
    cmp("groups", format!("{:?}", want.groups), format!("{:?}", have.groups));
    cmp("CapEff", format!("{:#x}", want.cap_eff), format!("{:#x}", have.cap_eff));
    cmp("CapPrm", format!("{:#x}", want.cap_prm), format!("{:#x}", have.cap_prm));
    cmp("CapInh", format!("{:#x}", want.cap_inh), format!("{:#x}", have.cap_inh));
    cmp("CapBnd", format!("{:#x}", want.cap_bnd), format!("{:#x}", have.cap_bnd));
    cmp("CapAmb", format!("{:#x}", want.cap_amb), format!("{:#x}", have.cap_amb));
    d
}

/// Gives the thread `p` drives the credentials `c`. `scratch` is task memory for arguments.
pub fn set(p: &mut Puppet, c: &pb::Creds, scratch: u64) -> Result<(), RestoreError> {
    let tid = p.tid();
    let now = current(tid)?;
    if differences(c, &now).is_empty() && securebits(p)? == c.securebits {
        return Ok(());
    }
    let prctl = |p: &mut Puppet, what: &'static str, args: [u64; 5]| {
        p.call(what, libc::SYS_prctl, [args[0], args[1], args[2], args[3], args[4], 0])
    };
    prctl(p, "prctl(PR_SET_SECUREBITS)", [PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0])?;
    for cap in 0..64u64 {
        if now.cap_bnd & (1 << cap) != 0 && c.cap_bnd & (1 << cap) == 0 {
            prctl(p, "prctl(PR_CAPBSET_DROP)", [PR_CAPBSET_DROP, cap, 0, 0, 0])?;
        }
    }
    let g: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    p.write(scratch, &g)?;
    p.call("setgroups", libc::SYS_setgroups, [c.groups.len() as u64, scratch, 0, 0, 0, 0])?;
    if let [r, e, s, fs] = c.gids[..] {
        p.call("setresgid", libc::SYS_setresgid, [u64::from(r), u64::from(e), u64::from(s), 0, 0, 0])?;
        p.call("setfsgid", libc::SYS_setfsgid, [u64::from(fs), 0, 0, 0, 0, 0])?;
    }
    if let [r, e, s, fs] = c.uids[..] {
        p.call("setresuid", libc::SYS_setresuid, [u64::from(r), u64::from(e), u64::from(s), 0, 0, 0])?;
        p.call("setfsuid", libc::SYS_setfsuid, [u64::from(fs), 0, 0, 0, 0, 0])?;
    }
    let setpcap = 1u64 << CAP_SETPCAP;
    capset(p, scratch, c.cap_eff | setpcap, c.cap_prm | setpcap, c.cap_inh)?;
    prctl(p, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0])?;
    for cap in (0..64u64).filter(|b| c.cap_amb & (1 << b) != 0) {
        prctl(p, "prctl(PR_CAP_AMBIENT_RAISE)", [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0])?;
    }
    prctl(p, "prctl(PR_SET_SECUREBITS)", [PR_SET_SECUREBITS, u64::from(c.securebits), 0, 0, 0])?;
    capset(p, scratch, c.cap_eff, c.cap_prm, c.cap_inh)?;
    let got = current(tid)?;
    let diff = differences(c, &got);
    if !diff.is_empty() {
        return Err(RestoreError::step(tid, "restoring its credentials", std::io::Error::other(diff.join(", "))));
    }
    Ok(())
}

/// `capset` (version 3: 64-bit sets as two 32-bit halves).
fn capset(p: &mut Puppet, scratch: u64, eff: u64, prm: u64, inh: u64) -> Result<(), RestoreError> {
    let mut b = Vec::with_capacity(8 + 24);
    b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes()); // this thread
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    p.write(scratch, &b)?;
    p.call("capset", libc::SYS_capset, [scratch, scratch + 8, 0, 0, 0, 0])?;
    Ok(())
}
