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

/// A decimal number written the one way [`task_id`] writes it (no sign, no
/// leading zeros), so every id has exactly one spelling.
fn canonical(digits: &str) -> Option<u64> {
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'));
    if ok { digits.parse().ok() } else { None }
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
    let head = id.split(':').next()?;
    let mut parts = head.split('-');
    let run = canonical(parts.next()?.strip_prefix('r')?)?;
    let inst = canonical(parts.next()?.strip_prefix('i')?)?
        .try_into()
        .ok()?;
    let attempt = canonical(parts.next()?.strip_prefix('a')?)?
        .try_into()
        .ok()?;
    if parts.next().is_some() {
        return None;
    }
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
