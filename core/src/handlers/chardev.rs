//! Built-in handler for character devices that are reopened by path.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, open_raw, Builtin, BUILTIN_VERSION, REOPEN_STRIP};
use crate::images::pb;

/// Stateless character devices: reopening them by path is a faithful restore.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// `/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random`, `/dev/urandom`.
pub struct CharDev;

inventory::submit! { Builtin { priority: 110, make: || boxed(CharDev) } }

impl Handler for CharDev {
    fn name(&self) -> RString {
        "chardev".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFCHR && DEVICES.contains(&fd.link.as_str())
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        RResult::ROk(device_blob(fd))
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r =
            pb::RegFile::decode(blob.as_slice()).map_err(|e| format!("corrupt chardev record: {e}")).and_then(|img| {
                if !DEVICES.contains(&img.path.as_str()) {
                    return Err(format!("{}: not a device crt reopens", img.path));
                }
                open_raw(&img.path, img.flags as i32 & !REOPEN_STRIP)
            });
        r.map_err(RString::from).into()
    }
}

/// The record of a character device fd (also the `tty` handler's): its
/// path, open flags, mode and device number.
pub(super) fn device_blob(fd: &FdDesc) -> RVec<u8> {
    let img =
        pb::RegFile { path: fd.link.to_string(), flags: fd.flags, mode: fd.mode, dev: fd.rdev, ..Default::default() };
    img.encode_to_vec().into()
}
