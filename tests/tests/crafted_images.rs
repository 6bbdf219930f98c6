//! Images crafted to be wrong but with valid checksums (a CRC only catches
//! accidents): every one must be refused or fail cleanly — an error on
//! stderr, exit non-zero, no panic, no task left running — and the
//! untouched image must still restore.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;

use crt_core::images::{pb, ImageDir, Kind};
use crt_tests::{crt, dump, pid_alive, poll_until, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn restore_must_fail(img: &Path, pid: i32, case: &str) {
    let out = crt(&["restore", "-D", img.to_str().unwrap()]);
    assert!(!out.success(), "{case}: crafted image restored?!");
    assert!(!out.stderr.trim().is_empty(), "{case}: no error message");
    assert!(!out.stderr.contains("panicked"), "{case}: {}", out.stderr);
    eprintln!("{case}: {}", out.stderr.lines().find(|l| l.contains("error")).unwrap_or(""));
    assert!(
        poll_until(std::time::Duration::from_secs(2), || !pid_alive(pid)),
        "{case}: pid {pid} left running after a failed restore"
    );
}

#[test]
fn crafted_images_fail_cleanly() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    let dir = TestDir::new("crt-crafted-");
    let good = dir.path().join("good");
    dump(&[&w], &good, &[]).assert_success();
    let pid = w.pid();
    let src = ImageDir::new(&good);
    let task = src.read_task(pid).unwrap();
    let pagemap = src.read_pagemap(pid).unwrap();
    let inventory = src.read_inventory().unwrap();

    type Edit = Box<dyn Fn(&mut pb::Task, &mut pb::PageMap, &mut pb::Inventory)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("no threads", Box::new(|t, _, _| t.threads.clear())),
        ("short registers", Box::new(|t, _, _| t.threads[0].regs.truncate(10))),
        ("garbage xsave", Box::new(|t, _, _| t.threads[0].xsave = vec![0xff; 100])),
        ("area ends before it starts", Box::new(|t, _, _| t.vmas[0].end = t.vmas[0].start - 4096)),
        ("unaligned area", Box::new(|t, _, _| t.vmas[0].start += 1)),
        ("area over the whole address space", Box::new(|t, _, _| t.vmas[0].end = !4095)),
        ("unknown handler", Box::new(|t, _, _| t.fds[0].handler = "no-such-handler".into())),
        ("corrupt handler blob", Box::new(|t, _, _| t.fds[0].blob = vec![0xff; 7])),
        (
            "signal 0 and 99",
            Box::new(|t, _, _| {
                t.sigactions[0].signo = 0;
                t.sigactions[1].signo = 99;
                t.sigactions[1].handler = 1;
            }),
        ),
        ("no mm", Box::new(|t, _, _| t.mm = None)),
        ("no vdso", Box::new(|t, _, _| t.mm.as_mut().unwrap().vdso_block.clear())),
        ("exe that does not exist", Box::new(|t, _, _| t.mm.as_mut().unwrap().exe = "/nonexistent/exe".into())),
        ("page run outside memory", Box::new(|_, p, _| p.runs[0].vaddr = 1 << 60)),
        (
            "page run beyond the file",
            Box::new(|_, p, _| {
                p.runs[0].nr_pages += 1000;
                p.total_pages += 1000;
            }),
        ),
        ("a thousand shards", Box::new(|_, p, _| p.shards = 1000)),
        ("task not in the directory", Box::new(|_, _, i| i.tasks.push(4_000_000))),
        ("no roots", Box::new(|_, _, i| i.roots.clear())),
        ("other kernel", Box::new(|_, _, i| i.kernel_release = "2.6.32".into())),
    ];
    for (i, (case, edit)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("case{i}"));
        copy_dir(&good, &img);
        let (mut t, mut p, mut inv) = (task.clone(), pagemap.clone(), inventory.clone());
        edit(&mut t, &mut p, &mut inv);
        let d = ImageDir::new(&img);
        d.write_msg(&d.task_path(pid), Kind::Task, &t).unwrap();
        d.write_msg(&d.pagemap_path(pid), Kind::PageMap, &p).unwrap();
        d.write_msg(&d.inventory_path(), Kind::Inventory, &inv).unwrap();
        restore_must_fail(&img, pid, case);
    }
    // The untouched image still restores.
    let mut r = Restored::start(&good, &[]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}
