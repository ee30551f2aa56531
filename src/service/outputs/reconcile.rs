//! The whole state published at once, when a rebuild has caught up: its messages formed on a
//! thread per core and reconciled, as they come, with what the output topics hold.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use foldhash::fast::RandomState;
use labelqc_dataflows::records::{Entity, RecordKey, Records};

use super::{gate_of, messages, GateRecords, Hashed, Message, OutputTopic, Published};

/// The whole state (`current`, every record) as its difference from what the topics hold: each
/// message that changes what its topic holds goes to `changed` as soon as it is formed, in the
/// state's order (each message of the state is also passed to `on_current`); then the tombstones
/// of entities the topics hold and the state lacks. Returns the gate records of every decision
/// the gating topic has not seen.
///
/// # Errors
/// The first error of `changed`, which ends the reconciliation there.
pub fn reconcile<E>(
    published: &mut Published,
    current: &Records,
    updated_at: &str,
    mut on_current: impl FnMut(&Message),
    mut changed: impl FnMut(Message) -> Result<(), E>,
) -> Result<GateRecords, E> {
    let mut held: HashSet<(OutputTopic, u64), RandomState> = HashSet::default();
    let mut gates = Vec::new();
    let mut decided: HashSet<(String, String), RandomState> = HashSet::default();
    let mut records = Vec::with_capacity(current.len());
    for (key, value) in current.iter() {
        if let Entity::Gate(annotator) = &key.entity {
            decided.insert((key.project.to_string(), annotator.to_string()));
            gates.extend(published.gate_records(&key.project, annotator, gate_of(value).as_ref()));
        } else {
            records.push((key, value));
        }
    }
    held.reserve(records.len());
    form_in_parallel(&records, updated_at, |part| {
        for (message, hashed) in part {
            held.insert(hashed.key);
            on_current(&message);
            if published.observe_hashed(hashed) {
                changed(message)?;
            }
        }
        Ok(())
    })?;
    for tombstone in published.vanished(&held) {
        changed(tombstone)?;
    }
    // Annotators the gating topic knows who have left their project while the service was down.
    for (project, name) in published.gate_keys() {
        if !decided.contains(&(project.clone(), name.clone())) {
            gates.extend(published.gate_records(&project, &name, None));
        }
    }
    Ok(gates)
}

/// Forms the messages of `records`, with their hashes, and hands them to `each` in order, a part
/// at a time. When the whole state is published at once (a rebuild has caught up, and the
/// workers are idle), threads form the parts, one per core, while `each` takes the parts formed:
/// on one thread, forming 300,000 records' messages and then sending them held the first
/// publication back by about 0.6 s on 2 cores.
///
/// # Errors
/// The first error of `each`: no later part is handed over.
fn form_in_parallel<E>(
    records: &[(&RecordKey, &[u8])],
    updated_at: &str,
    mut each: impl FnMut(Vec<(Message, Hashed)>) -> Result<(), E>,
) -> Result<(), E> {
    let form = |part: &[(&RecordKey, &[u8])]| -> Vec<(Message, Hashed)> {
        let messages = part.iter().flat_map(|&(key, value)| messages(key, Some(value), updated_at));
        messages
            .map(|message| {
                let hashed = Hashed::of(&message);
                (message, hashed)
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads == 1 || records.len() < 10_000 {
        return each(form(records));
    }
    // Parts small enough that the first are taken while the later ones are formed; each former
    // takes the next part not taken.
    let parts: Vec<_> = records.chunks(records.len().div_ceil(threads * 16)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (formed, take) = std::sync::mpsc::channel();
        let mut formers = 0;
        for _ in 0..threads {
            let (formed, next, parts, form) = (formed.clone(), &next, &parts, &form);
            let former =
                std::thread::Builder::new().name("labelqc-form".into()).spawn_scoped(scope, move || loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(part) = parts.get(index) else { return };
                    // The taker is gone only after an error: nothing more is needed.
                    if formed.send((index, form(part))).is_err() {
                        return;
                    }
                });
            formers += usize::from(former.is_ok());
        }
        drop(formed);
        if formers == 0 {
            // The system refused every thread: the parts are formed here.
            return parts.iter().try_for_each(|part| each(form(part)));
        }
        // In order: a part formed early waits for those before it.
        let mut early = BTreeMap::new();
        let mut due = 0;
        for (index, part) in take {
            early.insert(index, part);
            while let Some(part) = early.remove(&due) {
                each(part)?;
                due += 1;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use labelqc_dataflows::records::Record;

    use super::*;

    /// A state of `n` pair records, and a second state with every tenth value changed and the
    /// last record gone.
    fn states(n: usize) -> (Records, Records) {
        let record = |i: usize, v: usize| Record {
            key: RecordKey {
                project: "p".into(),
                task: "t".into(),
                entity: Entity::Pair(format!("a{i:06}").into(), "b".into()),
            },
            value: format!("{{\"n\":{v}}}").into_bytes(),
        };
        let (mut before, mut after) = (Records::default(), Records::default());
        before.apply_owned((0..n).map(|i| (record(i, 0), 1)).collect());
        after.apply_owned((0..n - 1).map(|i| (record(i, usize::from(i % 10 == 0)), 1)).collect());
        (before, after)
    }

    #[test]
    fn the_state_is_formed_in_parallel_and_sent_in_order_with_only_its_differences() {
        let (before, after) = states(25_000);
        let mut published = Published::default();
        let mut first = Vec::new();
        let gates = reconcile(
            &mut published,
            &before,
            "now",
            |_| {},
            |m| {
                first.push(m);
                Ok::<_, ()>(())
            },
        );
        assert_eq!(gates, Ok(Vec::new()));
        // Every record, in the state's order, as one part formed here would give it.
        let records: Vec<_> = before.iter().collect();
        let expected: Vec<Message> = records.iter().flat_map(|(k, v)| messages(k, Some(v), "now")).collect();
        assert_eq!(first.len(), 25_000);
        assert!(first == expected, "the messages come in the state's order");
        // After a restart that read the topics back: only what changed, every tenth value and the
        // last record's tombstone.
        let mut published = Published::default();
        for m in &first {
            published.read_back(m.topic, &m.key, m.value.as_deref());
        }
        let mut second = Vec::new();
        let mut current = 0;
        reconcile(
            &mut published,
            &after,
            "now",
            |_| current += 1,
            |m| {
                second.push(m);
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert_eq!(current, 24_999);
        assert_eq!(second.len(), 2_500 + 1);
        assert_eq!(
            second.last().map(|m| (m.key.as_str(), m.value.is_none())),
            Some((r#"["p","t","a024999","b"]"#, true))
        );
    }

    #[test]
    fn the_first_error_ends_the_reconciliation() {
        let (before, _) = states(25_000);
        let mut sent = 0;
        let result = reconcile(
            &mut Published::default(),
            &before,
            "now",
            |_| {},
            |_| {
                sent += 1;
                if sent == 1_000 {
                    Err("refused")
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(result, Err("refused"));
        assert_eq!(sent, 1_000);
    }
}
