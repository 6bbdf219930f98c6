//! `crt restore --detach`: crt exits once the forest runs, and the roots
//! are re-parented to crt's parent (here the test, a child subreaper).
#![allow(clippy::panic, clippy::unwrap_used)]

use std::time::Duration;

use crt_tests::{
    crt, dump, poll_until, proc_status_field, send_signal, track, wait_pid_timeout, TestDir, Workload, READY_TIMEOUT,
    RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

#[test]
fn detached_roots_belong_to_crts_parent_and_finish_normally() {
    crt_tests::init!();
    let a = Workload::spawn("counters");
    let b = Workload::spawn("tree_pipes");
    a.wait_ready(READY_TIMEOUT);
    b.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    let dir = TestDir::new("crt-detach-");
    let img = dir.path().join("img");
    dump(&[&a, &b], &img, &[]).assert_success();
    for w in [&a, &b] {
        track(w.pid());
    }
    let out = crt(&["restore", "-D", img.to_str().unwrap(), "--detach"]);
    out.assert_success();
    let me = std::process::id().to_string();
    for w in [&a, &b] {
        assert!(
            poll_until(Duration::from_secs(3), || proc_status_field(w.pid(), "PPid").as_deref() == Some(me.as_str())),
            "pid {} was not re-parented to the test (PPid {:?})",
            w.pid(),
            proc_status_field(w.pid(), "PPid")
        );
    }
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in [&a, &b] {
        w.mark_log();
        send_signal(w.pid(), libc::SIGTERM);
        let st = wait_pid_timeout(w.pid(), Duration::from_secs(20)).expect("restored root did not exit");
        assert!(st.success(), "pid {} exited with {st:?}:\n{}", w.pid(), w.log());
        w.assert_passed();
    }
}
