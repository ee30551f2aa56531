//! The report of spec section 3 as the collection of final records: each worker's records,
//! sorted, are merged in report order (scopes by (project, task); within a scope its object, its
//! pairs by (a, b), its annotators by id, its items by id, its alerts by id, its windows by size
//! and start; see [`labelqc_dataflows::records::Entity`]) and written as they come, each record's
//! JSON as it was rendered, so that no structure of the whole report is built. `--pretty` output
//! is the compact text re-indented the way `serde_json`'s pretty printer writes it.

use std::io::{self, Write};

use labelqc_dataflows::records::{Entity, Record};
use serde::Serialize;

/// The final records of a report, sorted per worker.
pub struct Report {
    /// Each worker's records, sorted.
    pub parts: Vec<Vec<Record>>,
    /// Whether the report lists each scope's items.
    pub with_items: bool,
}

/// The part of a scope's object being written.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Pairs,
    Annotators,
    Items,
    Alerts,
    Windows,
    /// The scope's leaderboard, when it has one: buffered, and written by rank.
    Leaderboard,
    Done,
}

impl Section {
    fn of(entity: &Entity) -> Option<Section> {
        Some(match entity {
            Entity::Pair(..) => Section::Pairs,
            Entity::Annotator(_) => Section::Annotators,
            Entity::Item(_) => Section::Items,
            Entity::Alert(_) => Section::Alerts,
            Entity::Window { .. } => Section::Windows,
            Entity::System(_) => Section::Leaderboard,
            // The scope's preference numbers are part of its record (`scope_truth`).
            Entity::Scope | Entity::Gate(_) | Entity::Preferences => return None,
        })
    }

    fn next(self) -> Section {
        match self {
            Section::Pairs => Section::Annotators,
            Section::Annotators => Section::Items,
            Section::Items => Section::Alerts,
            Section::Alerts => Section::Windows,
            Section::Windows => Section::Leaderboard,
            Section::Leaderboard | Section::Done => Section::Done,
        }
    }
}

/// Writes a report's scopes, record by record.
struct Writer<'w, W: Write> {
    out: &'w mut W,
    with_items: bool,
    /// Whether a scope was written (the next needs a comma).
    scopes: bool,
    /// Whether a scope is open, its section being written, and whether that has an element yet.
    in_scope: bool,
    current: Section,
    has: bool,
    /// The open scope's leaderboard entries, with their ranks.
    leaderboard: Vec<(u32, Vec<u8>)>,
}

impl<W: Write> Writer<'_, W> {
    /// Closes the sections of the open scope up to `to`, opening (empty) each one between them
    /// that the report always lists.
    fn advance(&mut self, to: Section) -> io::Result<()> {
        while self.current < to {
            match self.current {
                Section::Items if !self.with_items => {}
                Section::Items => self.out.write_all(b"}")?,
                Section::Windows if !self.has => {}
                Section::Done => {}
                Section::Leaderboard => self.write_leaderboard()?,
                _ => self.out.write_all(b"]")?,
            }
            self.current = self.current.next();
            self.has = false;
            match self.current {
                Section::Annotators => self.out.write_all(b",\"annotators\":[")?,
                Section::Items if self.with_items => self.out.write_all(b",\"items\":{")?,
                Section::Alerts => self.out.write_all(b",\"alerts\":[")?,
                // Windows are listed only when there are some: opened with the first.
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the buffered leaderboard, by rank, if there is one.
    fn write_leaderboard(&mut self) -> io::Result<()> {
        if self.leaderboard.is_empty() {
            return Ok(());
        }
        self.leaderboard.sort();
        self.out.write_all(b",\"leaderboard\":[")?;
        for (i, (_, entry)) in self.leaderboard.drain(..).enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            self.out.write_all(&entry)?;
        }
        self.out.write_all(b"]")
    }

    fn end_scope(&mut self) -> io::Result<()> {
        if self.in_scope {
            self.advance(Section::Done)?;
            self.out.write_all(b"}")?;
            self.in_scope = false;
        }
        Ok(())
    }

    fn record(&mut self, record: &Record) -> io::Result<()> {
        let entity = &record.key.entity;
        if *entity == Entity::Scope {
            self.end_scope()?;
            if self.scopes {
                self.out.write_all(b",")?;
            }
            self.scopes = true;
            // The scope object without its closing brace: its parts follow.
            self.out.write_all(&record.value[..record.value.len() - 1])?;
            self.out.write_all(b",\"pairs\":[")?;
            (self.in_scope, self.current, self.has) = (true, Section::Pairs, false);
            return Ok(());
        }
        let Some(section) = Section::of(entity) else { return Ok(()) };
        if !self.in_scope || (section == Section::Items && !self.with_items) {
            return Ok(());
        }
        self.advance(section)?;
        if section == Section::Leaderboard {
            #[derive(serde::Deserialize)]
            struct Rank {
                rank: u32,
            }
            let rank = serde_json::from_slice::<Rank>(&record.value).map_or(u32::MAX, |r| r.rank);
            self.leaderboard.push((rank, record.value.clone()));
            return Ok(());
        }
        if section == Section::Windows && !self.has {
            self.out.write_all(b",\"windows\":[")?;
        } else if self.has {
            self.out.write_all(b",")?;
        }
        if let Entity::Item(name) = entity {
            serde_json::to_writer(&mut *self.out, &**name)?;
            self.out.write_all(b":")?;
        }
        self.out.write_all(&record.value)?;
        self.has = true;
        Ok(())
    }
}

impl Report {
    /// The records in report order: a merge of the workers' sorted records.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        let mut heads: Vec<std::iter::Peekable<std::slice::Iter<'_, Record>>> =
            self.parts.iter().map(|part| part.iter().peekable()).collect();
        std::iter::from_fn(move || {
            let next = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(i, h)| h.peek().map(|r| (i, &r.key)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i)?;
            heads[next].next()
        })
    }

    /// Writes the report as compact JSON.
    pub fn write_compact<W: Write>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(b"{\"scopes\":[")?;
        let mut writer = Writer {
            out,
            with_items: self.with_items,
            scopes: false,
            in_scope: false,
            current: Section::Done,
            has: false,
            leaderboard: Vec::new(),
        };
        for record in self.records() {
            writer.record(record)?;
        }
        writer.end_scope()?;
        writer.out.write_all(b"]}")
    }

    /// Writes the report, pretty-printed as `serde_json` does when `pretty`.
    pub fn write<W: Write>(&self, out: &mut W, pretty: bool) -> io::Result<()> {
        if !pretty {
            return self.write_compact(out);
        }
        let mut indenter = Indenter { out, depth: 0, in_string: false, escaped: false, pending_open: None };
        self.write_compact(&mut indenter)?;
        indenter.finish()
    }

    /// The report as compact JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_compact(&mut out).expect("writing to memory does not fail");
        out
    }

    /// The live labels of the report's scopes.
    pub fn live_labels(&self) -> i64 {
        #[derive(serde::Deserialize)]
        struct Labels {
            n_labels: i64,
        }
        // Scope records are few: a scan of each worker's records, not the merge of all of them.
        self.parts
            .iter()
            .flatten()
            .filter(|r| r.key.entity == Entity::Scope)
            .filter_map(|r| serde_json::from_slice::<Labels>(&r.value).ok())
            .map(|l| l.n_labels)
            .sum()
    }
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = String::from_utf8(self.to_vec()).map_err(serde::ser::Error::custom)?;
        serde_json::value::RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// Re-indents compact JSON as `serde_json`'s pretty printer writes it: two spaces per level,
/// `": "` between a key and its value, empty objects and arrays as `{}` and `[]`.
struct Indenter<'w, W: Write> {
    out: &'w mut W,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// An opening bracket not yet written: whether its container is empty shows with the next byte.
    pending_open: Option<u8>,
}

impl<W: Write> Indenter<'_, W> {
    fn newline(&mut self) -> io::Result<()> {
        self.out.write_all(b"\n")?;
        for _ in 0..self.depth {
            self.out.write_all(b"  ")?;
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> io::Result<()> {
        if let Some(open) = self.pending_open.take() {
            if !self.in_string && (b == b'}' || b == b']') {
                return self.out.write_all(&[open, b]);
            }
            self.out.write_all(&[open])?;
            self.depth += 1;
            self.newline()?;
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return self.out.write_all(&[b]);
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.out.write_all(b"\"")
            }
            b'{' | b'[' => {
                self.pending_open = Some(b);
                Ok(())
            }
            b'}' | b']' => {
                self.depth -= 1;
                self.newline()?;
                self.out.write_all(&[b])
            }
            b',' => {
                self.out.write_all(b",")?;
                self.newline()
            }
            b':' => self.out.write_all(b": "),
            _ => self.out.write_all(&[b]),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(open) = self.pending_open.take() {
            self.out.write_all(&[open])?;
        }
        self.out.flush()
    }
}

impl<W: Write> Write for Indenter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.byte(b)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
