//! Identifiers and their derivations.
//!
//! A run's id is the log index of its `RunSubmitted` event: unique,
//! increasing and derived from the log alone. A task id is derived from
//! (run, instance, attempt) plus the human-readable step path, so a new
//! leader can name every task that may have been launched (brief 4.3).

/// Run id: the log index of the run's `RunSubmitted` event.
pub type RunId = u64;
/// Index of a node instance within its run (assigned by `apply` in order).
pub type InstId = u32;

/// The Mesos task id of one attempt: `r{run}-i{inst}-a{attempt}:{path}`,
/// with `/` in the path written as `:` (Mesos ids may not contain `/`).
pub fn task_id(run: RunId, inst: InstId, attempt: u32, path: &str) -> String {
    format!("r{run}-i{inst}-a{attempt}:{}", path.replace('/', ":"))
}

/// True if `id` is exactly `task_id(run, inst, attempt, path)`, checked
/// without allocating (apply verifies every launch intent with it).
pub fn is_task_id(id: &str, run: RunId, inst: InstId, attempt: u32, path: &str) -> bool {
    let Some((head, tail)) = id.split_once(':') else {
        return false;
    };
    if parse_task_id(head) != Some((run, inst, attempt)) {
        return false;
    }
    tail.len() == path.len()
        && tail
            .bytes()
            .zip(path.bytes())
            .all(|(a, b)| a == if b == b'/' { b':' } else { b })
}

/// Parses the numeric part of a task id made by [`task_id`]; the caller
/// checks the path part against state. `None` for ids kaon did not make.
pub fn parse_task_id(id: &str) -> Option<(RunId, InstId, u32)> {
    // Hand-rolled: apply checks every launch id, so this is on the replay path.
    let b = id.as_bytes();
    let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
    let mut pos = 0;
    let mut field = |tag: u8, last: bool| -> Option<u64> {
        if b.get(pos) != Some(&tag) {
            return None;
        }
        pos += 1;
        let start = pos;
        let mut v: u64 = 0;
        while pos < end && b[pos].is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b[pos] - b'0'))?;
            pos += 1;
        }
        let len = pos - start;
        if len == 0 || (len > 1 && b[start] == b'0') {
            return None;
        }
        if last {
            (pos == end).then_some(v)
        } else if b.get(pos) == Some(&b'-') {
            pos += 1;
            Some(v)
        } else {
            None
        }
    };
    let run = field(b'r', false)?;
    let inst = field(b'i', false)?.try_into().ok()?;
    let attempt = field(b'a', true)?.try_into().ok()?;
    Some((run, inst, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_reject_foreign_ids() {
        let id = task_id(17, 42, 3, "block#2/region-model[1]");
        assert_eq!(id, "r17-i42-a3:block#2:region-model[1]");
        assert!(!id.contains('/'));
        assert_eq!(parse_task_id(&id), Some((17, 42, 3)));
        assert!(is_task_id(&id, 17, 42, 3, "block#2/region-model[1]"));
        assert!(!is_task_id(&id, 17, 42, 3, "block#2/region-model[2]"));
        assert!(!is_task_id(&id, 17, 42, 4, "block#2/region-model[1]"));
        assert!(!is_task_id(
            "r017-i42-a3:block#2:region-model[1]",
            17,
            42,
            3,
            "block#2/region-model[1]"
        ));
        for bad in [
            "",
            "x",
            "r1-i2",
            "r1-i2-a3-z4:p",
            "ra-i2-a3:p",
            "mesos-task-1",
        ] {
            assert_eq!(parse_task_id(bad), None, "{bad}");
        }
    }
}
