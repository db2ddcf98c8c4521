//! The `sqlite3_vfs` method table and its trampolines (xOpen, xDelete, xAccess,
//! xFullPathname, xGetLastError; the rest delegate to the default VFS), generic over the
//! [`VfsImpl`] they serve.

use std::ffi::{c_char, c_int, c_void};

use rusqlite::ffi as sys;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::io::io_methods;
use super::{FileSlot, LAST_ERROR, OpenFile, OpenParams, Registration, VfsImpl, c_str, catch};
use crate::error::{Error, Op};

pub(super) fn vfs_table<V: VfsImpl>(
    size: c_int,
    max_pathname: c_int,
    name: *const c_char,
) -> sys::sqlite3_vfs {
    sys::sqlite3_vfs {
        iVersion: 2,
        szOsFile: size,
        mxPathname: max_pathname,
        pNext: std::ptr::null_mut(),
        zName: name,
        pAppData: std::ptr::null_mut(),
        xOpen: Some(x_open::<V>),
        xDelete: Some(x_delete::<V>),
        xAccess: Some(x_access::<V>),
        xFullPathname: Some(x_full_pathname::<V>),
        xDlOpen: Some(x_dl_open::<V>),
        xDlError: Some(x_dl_error::<V>),
        xDlSym: Some(x_dl_sym::<V>),
        xDlClose: Some(x_dl_close::<V>),
        xRandomness: Some(x_randomness::<V>),
        xSleep: Some(x_sleep::<V>),
        xCurrentTime: Some(x_current_time::<V>),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64::<V>),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    }
}

/// The registration behind a `sqlite3_vfs` pointer SQLite passes back.
///
/// # Safety
/// `vfs` must be the table of a [`Registration`] (SQLite only calls a VFS it found
/// registered, and registrations are leaked, so they outlive every call).
unsafe fn registration<V: VfsImpl>(vfs: *mut sys::sqlite3_vfs) -> &'static Registration<V> {
    // SAFETY: per this function's contract pAppData points at the Registration; SQLite
    // never writes pAppData.
    let app = unsafe { (*vfs).pAppData };
    // SAFETY: as above; the Registration is leaked and only read through `&`.
    unsafe { &*app.cast::<Registration<V>>() }
}

/// The default VFS this one delegates to, as a raw pointer: it is the process-wide
/// default VFS that every thread uses, so no `&mut` to it may be made here.
///
/// # Safety
/// As [`registration`].
unsafe fn parent<V: VfsImpl>(vfs: *mut sys::sqlite3_vfs) -> *mut sys::sqlite3_vfs {
    // SAFETY: per this function's contract.
    unsafe { registration::<V>(vfs) }.parent
}

/// xOpen. SQLite's contract: on failure `pMethods` must be NULL, so xClose is not called.
unsafe extern "C" fn x_open<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    name: sys::sqlite3_filename,
    file: *mut sys::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let file = file.cast::<FileSlot<V>>();
    // SAFETY: SQLite passes szOsFile (the size of a FileSlot<V>) writable bytes, 8-byte
    // aligned, which `register` checked is enough for FileSlot<V>. Nothing is in them
    // yet, so nothing is dropped; a failure leaves them so: pMethods NULL, no file.
    unsafe {
        file.write(FileSlot {
            base: sys::sqlite3_file {
                pMethods: std::ptr::null(),
            },
            open: None,
        })
    };
    catch(Op::Open, || {
        // SAFETY: SQLite passes the VFS it found registered.
        let reg = unsafe { registration::<V>(vfs) };
        let raw_name = name;
        // SAFETY: SQLite's file name is NUL-terminated (or NULL for a temp file) and lives
        // until the file is closed.
        let name = unsafe { c_str(name) }?;
        // A new database (a new connection, or ATTACH) needs a live Vfs; the journals
        // and temp files of connections already open are served while it closes.
        let new_database = flags & sys::SQLITE_OPEN_MAIN_DB != 0;
        let params = if new_database && name.is_some() {
            // SAFETY: SQLite passed this name to xOpen for a main database; it lives
            // until the file's xClose, past this call.
            unsafe { OpenParams::of(raw_name) }
        } else {
            OpenParams::none()
        };
        let (state, handle) = reg.serve(new_database, |state| {
            let handle = state.open_with(name, flags, params)?;
            // Counted under the slot's lock, so a `Vfs` being dropped sees it.
            reg.open_files.fetch_add(1, Ordering::SeqCst);
            Ok((Arc::clone(state), handle))
        })?;
        // SAFETY: `file` was initialised above and nothing else refers to it.
        unsafe {
            (*file).open = Some(OpenFile {
                reg,
                vfs: state,
                file: handle,
            })
        };
        // SAFETY: as above; setting pMethods after the file is in place marks success.
        unsafe { (*file).base.pMethods = io_methods::<V>() };
        if !out_flags.is_null() {
            // SAFETY: SQLite passes a writable int or NULL.
            unsafe { *out_flags = flags };
        }
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_delete<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    catch(Op::Delete, || {
        // SAFETY: SQLite passes the VFS it found registered.
        let reg = unsafe { registration::<V>(vfs) };
        // SAFETY: SQLite passes a NUL-terminated name.
        let name = unsafe { c_str(name) }?.ok_or_else(|| Error::NoSuchFile(String::new()))?;
        reg.serve(false, |state| state.delete(name))?;
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_access<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    if !out.is_null() {
        // SAFETY: SQLite passes a writable int.
        unsafe { *out = 0 };
    }
    catch(Op::Access, || {
        // SAFETY: SQLite passes the VFS it found registered.
        let reg = unsafe { registration::<V>(vfs) };
        // SAFETY: SQLite passes a NUL-terminated name.
        let Ok(Some(name)) = (unsafe { c_str(name) }) else {
            return Ok(sys::SQLITE_OK);
        };
        let exists = reg.serve(false, |state| state.access(name))?;
        if !out.is_null() {
            // SAFETY: as above.
            unsafe { *out = c_int::from(exists) };
        }
        Ok(sys::SQLITE_OK)
    })
}

/// xFullPathname: the one name of the database (see `names.rs`: bare names stay as they
/// are, paths are resolved as the unix VFS resolves them, without following symlinks).
unsafe extern "C" fn x_full_pathname<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    catch(Op::Open, || {
        // SAFETY: SQLite passes the VFS it found registered.
        let reg = unsafe { registration::<V>(vfs) };
        // SAFETY: SQLite passes a NUL-terminated name.
        let name = unsafe { c_str(name) }?.unwrap_or_default();
        let full = reg.serve(true, |state| state.full_pathname(name))?;
        let capacity = usize::try_from(n_out).unwrap_or(0);
        if full.len() >= capacity || out.is_null() {
            return Err(Error::cant_open(
                name,
                "the name is longer than SQLite's path limit",
            ));
        }
        // SAFETY: `out` has `n_out` writable bytes and full.len() + 1 <= n_out.
        let out = unsafe { std::slice::from_raw_parts_mut(out.cast::<u8>(), capacity) };
        copy_c_string(full.as_bytes(), out);
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut sys::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let capacity = usize::try_from(n).unwrap_or(0);
    if capacity == 0 || out.is_null() {
        return 0;
    }
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        // SAFETY: `out` has `n` writable bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(out.cast::<u8>(), capacity) };
        copy_c_string(e.as_bytes(), out);
    });
    0
}

/// Copies `src` into `out` NUL-terminated, truncating it to fit.
fn copy_c_string(src: &[u8], out: &mut [u8]) {
    let len = src.len().min(out.len().saturating_sub(1));
    if let (Some(dst), Some(src)) = (out.get_mut(..len), src.get(..len)) {
        dst.copy_from_slice(src);
    }
    if let Some(nul) = out.get_mut(len) {
        *nul = 0;
    }
}

// The rest delegate to the default VFS, which knows the platform. None of them can
// panic on our side; the parent is C code.

unsafe extern "C" fn x_dl_open<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
) -> *mut c_void {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    match unsafe { (*p).xDlOpen } {
        // SAFETY: delegating with the parent's own table and SQLite's argument.
        Some(f) => unsafe { f(p, name) },
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_dl_error<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    if let Some(f) = unsafe { (*p).xDlError } {
        // SAFETY: delegating with the parent's own table and SQLite's arguments.
        unsafe { f(p, n, out) }
    }
}

type DlSym = unsafe extern "C" fn(*mut sys::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    let sym = unsafe { (*p).xDlSym };
    // SAFETY: delegating with the parent's own table and SQLite's arguments.
    sym.and_then(|f| unsafe { f(p, handle, symbol) })
}

unsafe extern "C" fn x_dl_close<V: VfsImpl>(vfs: *mut sys::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    if let Some(f) = unsafe { (*p).xDlClose } {
        // SAFETY: delegating with the parent's own table and SQLite's argument.
        unsafe { f(p, handle) }
    }
}

unsafe extern "C" fn x_randomness<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    match unsafe { (*p).xRandomness } {
        // SAFETY: delegating with the parent's own table and SQLite's arguments.
        Some(f) => unsafe { f(p, n, out) },
        None => 0,
    }
}

unsafe extern "C" fn x_sleep<V: VfsImpl>(vfs: *mut sys::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    match unsafe { (*p).xSleep } {
        // SAFETY: delegating with the parent's own table and SQLite's argument.
        Some(f) => unsafe { f(p, micros) },
        None => 0,
    }
}

unsafe extern "C" fn x_current_time<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    out: *mut f64,
) -> c_int {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    match unsafe { (*p).xCurrentTime } {
        // SAFETY: delegating with the parent's own table and SQLite's argument.
        Some(f) => unsafe { f(p, out) },
        None => sys::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_current_time_int64<V: VfsImpl>(
    vfs: *mut sys::sqlite3_vfs,
    out: *mut sys::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes the VFS it found registered.
    let p = unsafe { parent::<V>(vfs) };
    // SAFETY: the default VFS lives for the process; its table is only read.
    match unsafe { (*p).xCurrentTimeInt64 } {
        // SAFETY: delegating with the parent's own table and SQLite's argument.
        Some(f) => unsafe { f(p, out) },
        None => sys::SQLITE_ERROR,
    }
}
