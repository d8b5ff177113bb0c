//! statvfs(rootfs): disk_av_per = 100 x f_bavail / f_blocks, as node_exporter reports "/".
use std::{ffi::CString, io, mem::MaybeUninit, os::unix::ffi::OsStrExt, path::Path};

use super::CollectError;

pub fn available_percent(rootfs: &Path) -> Result<f64, CollectError> {
    let read_err = |source| CollectError::Read { path: rootfs.to_path_buf(), source };
    let c_path = CString::new(rootfs.as_os_str().as_bytes())
        .map_err(|_| read_err(io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL")))?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid C string and st points to writable memory of the right size.
    if unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(read_err(io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    if st.f_blocks == 0 {
        return Err(CollectError::Malformed {
            path: rootfs.to_path_buf(),
            reason: "filesystem reports 0 blocks".into(),
        });
    }
    Ok(100.0 * st.f_bavail as f64 / st.f_blocks as f64)
}
