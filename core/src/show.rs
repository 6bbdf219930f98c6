//! `crt show`: every image of a directory decoded to JSON.

use serde_json::{json, Map, Value};

use crate::images::{pb, ImageDir, ImageError};

/// Decodes the image directory (or one image file in it) to JSON.
pub fn show(dir: &ImageDir, only: Option<&str>) -> Result<Value, ImageError> {
    if let Some(name) = only {
        return show_one(dir, name);
    }
    let inv = dir.read_inventory()?;
    let mut tasks = Map::new();
    let mut all = Vec::new();
    for &pid in &inv.tasks {
        let task = dir.read_task(pid)?;
        let pagemap = dir.read_pagemap(pid)?;
        tasks.insert(pid.to_string(), json!({ "task": task_json(&task), "pagemap": to_value(&pagemap) }));
        all.push(task);
    }
    Ok(json!({
        "inventory": to_value(&inv),
        "forest": forest_json(&inv, &all),
        "tasks": Value::Object(tasks),
    }))
}

/// The forest at a glance: the tree of processes and the objects shared
/// between fds and tasks, with who holds them.
fn forest_json(inv: &pb::Inventory, tasks: &[pb::Task]) -> Value {
    use std::collections::BTreeMap;
    let procs: Vec<Value> = tasks
        .iter()
        .map(|t| {
            json!({
                "pid": t.pid, "ppid": t.ppid, "pgid": t.pgid, "sid": t.sid, "comm": t.comm,
                "root": inv.roots.contains(&t.pid),
                "threads": t.threads.iter().map(|x| x.tid).collect::<Vec<_>>(),
                "zombie": t.zombie, "stopped": t.stopped,
            })
        })
        .collect();
    let mut files: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    let mut memory: BTreeMap<(String, u64), Vec<Value>> = BTreeMap::new();
    for t in tasks {
        for f in &t.fds {
            files
                .entry(f.file_id)
                .or_default()
                .push(json!({ "pid": t.pid, "fd": f.fd, "object": f.link, "handler": f.handler }));
        }
        for v in t.vmas.iter().filter(|v| v.flags & libc::MAP_SHARED as u32 != 0 && v.ino != 0) {
            memory
                .entry((v.name.clone(), v.ino))
                .or_default()
                .push(json!({ "pid": t.pid, "start": format!("{:#x}", v.start), "end": format!("{:#x}", v.end) }));
        }
    }
    let shared_files: Vec<Value> = files
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|(id, holders)| json!({ "file_id": id, "holders": holders }))
        .collect();
    let shared_memory: Vec<Value> = memory
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|((name, ino), holders)| json!({ "object": name, "ino": ino, "holders": holders }))
        .collect();
    json!({ "roots": inv.roots, "processes": procs, "shared_files": shared_files, "shared_memory": shared_memory })
}

fn show_one(dir: &ImageDir, name: &str) -> Result<Value, ImageError> {
    let path = dir.path().join(name);
    let pid = |prefix: &str| -> Option<i32> { name.strip_prefix(prefix)?.strip_suffix(".img")?.parse().ok() };
    if name == "inventory.img" {
        return Ok(to_value(&dir.read_inventory()?));
    }
    if let Some(p) = pid("task-") {
        return Ok(task_json(&dir.read_task(p)?));
    }
    if let Some(p) = pid("pagemap-") {
        return Ok(to_value(&dir.read_pagemap(p)?));
    }
    if let Some(p) = pid("pages-") {
        let pm = dir.read_pagemap(p)?;
        dir.open_page_shards(p, &pm)?;
        return Ok(json!({ "pages": pm.total_pages, "bytes": pm.total_pages * crate::images::PAGE_SIZE }));
    }
    Err(ImageError::Invalid {
        path,
        what: "not an image name crt knows (inventory.img, task-PID.img, pagemap-PID.img, pages-PID.img)".into(),
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A task, with registers by name and built-in handler blobs decoded.
fn task_json(task: &pb::Task) -> Value {
    let mut v = to_value(task);
    if let Some(threads) = v.get_mut("threads").and_then(Value::as_array_mut) {
        for (t, img) in threads.iter_mut().zip(&task.threads) {
            if let Some(regs) = crate::ptrace::regs_from_bytes(&img.regs) {
                t["regs_decoded"] = json!({
                    "rip": format!("{:#x}", regs.rip), "rsp": format!("{:#x}", regs.rsp),
                    "rax": format!("{:#x}", regs.rax), "orig_rax": regs.orig_rax as i64,
                    "fs_base": format!("{:#x}", regs.fs_base),
                });
            }
        }
    }
    let decode = |blob: &[u8], handler: &str| -> Option<Value> {
        use prost::Message;
        matches!(handler, "regfile" | "chardev" | "file-memory")
            .then(|| pb::RegFile::decode(blob).ok().map(|r| to_value(&r)))
            .flatten()
    };
    for (key, items) in [("fds", "fd"), ("vmas", "vma")] {
        let _ = items;
        if let Some(arr) = v.get_mut(key).and_then(Value::as_array_mut) {
            for (i, item) in arr.iter_mut().enumerate() {
                let (blob, handler) = match key {
                    "fds" => (&task.fds[i].blob, &task.fds[i].handler),
                    _ => (&task.vmas[i].blob, &task.vmas[i].handler),
                };
                if let Some(d) = decode(blob, handler) {
                    item["blob_decoded"] = d;
                }
            }
        }
    }
    v
}
