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
    for &pid in &inv.tasks {
        let task = dir.read_task(pid)?;
        let pagemap = dir.read_pagemap(pid)?;
        tasks.insert(
            pid.to_string(),
            json!({ "task": task_json(&task), "pagemap": to_value(&pagemap) }),
        );
    }
    Ok(json!({ "inventory": to_value(&inv), "tasks": Value::Object(tasks) }))
}

fn show_one(dir: &ImageDir, name: &str) -> Result<Value, ImageError> {
    let path = dir.path().join(name);
    let pid = |prefix: &str| -> Option<i32> {
        name.strip_prefix(prefix)?
            .strip_suffix(".img")?
            .parse()
            .ok()
    };
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
        dir.open_pages(p, pm.total_pages)?;
        return Ok(
            json!({ "pages": pm.total_pages, "bytes": pm.total_pages * crate::images::PAGE_SIZE }),
        );
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
