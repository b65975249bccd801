//! From a chunk of committed row changes to frames in subscribers' outboxes: match
//! subscriptions (table, event, filters), read the security state (RLS on, role
//! attributes, column grants) afresh for the chunk, check RLS once per (role, claims)
//! group and table for the whole chunk, build each distinct `data` once, and push one
//! frame per channel listing the ids of all its matching bindings. Order is preserved:
//! the chunk is pushed change by change after all checks are done and after every
//! earlier chunk's (rounds overlap: see [`super::turns`]).

use std::collections::HashMap;
use std::sync::Arc;

use realtime_protocol::encode::{self, WireFrame};
use realtime_protocol::filter::Action;
use realtime_protocol::Vsn;
use realtime_wal::change::{ChangeKind, OldTuple, RowChange};
use realtime_wal::pgoutput::{Cell as WalCell, TupleData};
use tracing::{debug, warn};

use super::catalog::{Access, Security, TableInfo};
use super::filter::Cell;
use super::payload::{self, Change};
use super::registry::TableSubs;
use super::rls::{self, Check, Viewer};
use super::rls_shared::{Group, Row};
use super::subscribe::Subscription;
use super::visibility::Pending;
use super::PgChanges;

/// One change and who may get it. Subscribers are indexes into `subs` (the table's
/// channels as this round sees them): a round does per subscriber only index and flag
/// work, so its cost stays small when a thousand subscribers watch one table.
struct Prepared<'a> {
    table: Arc<TableInfo>,
    subs: Arc<TableSubs>,
    change: Change<'a>,
    pk: Vec<String>,
    /// The channels (indexes into `subs.channels`) with a binding that matches the change.
    candidates: Vec<u32>,
    /// Per candidate: may see it. False until this round's security state says the role
    /// exists (fail closed), then cleared again for rows RLS hides.
    visible: Vec<bool>,
    /// Per role of `subs.roles`: what it may read, from this round's [`Security`] (`None`:
    /// gone, or not read yet).
    access: Vec<Option<Arc<Access>>>,
}

impl Prepared<'_> {
    /// The image filters are evaluated on: the old row for DELETE, else the new one.
    fn filter_image(&self) -> Option<&[Cell<'_>]> {
        if self.change.kind == Action::Delete {
            self.change.old.as_deref()
        } else {
            self.change.new.as_deref()
        }
    }
}

/// True when `s` wants a change of `kind` on `table` whose filter image is `image`.
fn wants(s: &Subscription, table: u32, kind: Action, image: Option<&[Cell<'_>]>) -> bool {
    if s.table != table || (s.action != Action::All && s.action != kind) {
        return false;
    }
    let Some(img) = image else {
        return s.filters.is_empty();
    };
    s.filters
        .iter()
        .all(|f| f.matches(img.get(f.column).copied().unwrap_or(Cell::Missing)))
}

/// Delivers a chunk of changes, in order; `commit_us[i]` is change i's commit time;
/// `xids` are the ids of their transactions.
pub async fn deliver(pg: &PgChanges, changes: &[RowChange], commit_us: &[i64], xids: &[u32]) {
    // Taken before the first await: rounds start in batch order, so turns follow it.
    let turn = pg.turns.take();
    // Changes of one transaction share a timestamp: format each distinct one once.
    let mut stamps: Vec<(i64, String)> = Vec::new();
    for &t in commit_us {
        if stamps.last().is_none_or(|(last, _)| *last != t) {
            stamps.push((t, payload::commit_timestamp(t)));
        }
    }
    // One view of each table's subscribers for the whole round, so viewer numbers agree
    // across its changes.
    let mut subs: HashMap<u32, Arc<TableSubs>> = HashMap::new();
    let mut prepared: Vec<Prepared<'_>> = Vec::with_capacity(changes.len());
    for (change, t) in changes.iter().zip(commit_us) {
        let ts = stamps.iter().find(|(s, _)| s == t).map_or("", |(_, s)| s.as_str());
        let oid = change.relation.id;
        let table_subs = subs.entry(oid).or_insert_with(|| pg.registry.for_table(oid)).clone();
        if let Some(p) = prepare(pg, table_subs, change, ts).await {
            prepared.push(p);
        }
    }
    // The RLS checks read the live rows, so they must see these transactions.
    let pending = Pending::new(xids);
    let started = std::time::Instant::now();
    // The last round's security state predicts this one's: the checks start at once,
    // beside the read of this round's state, and count only if it agrees on who is
    // checked; otherwise they run again under it. One round trip of latency, not two.
    let hint = pg.security_hint();
    if let Some(h) = &hint {
        apply_security(&mut prepared, h);
    }
    let ahead = async {
        match &hint {
            Some(_) => Some(check_rls(pg, &prepared, &pending).await),
            None => None,
        }
    };
    let (security, ahead) = tokio::join!(read_security(pg, &prepared), ahead);
    let Some(security) = security else {
        return;
    };
    let agreed = hint.as_ref().is_some_and(|h| same_checks(h, &security, &prepared));
    apply_security(&mut prepared, &security);
    pg.set_security_hint(security);
    let secured_at = started.elapsed();
    let verdicts = match ahead {
        Some(verdicts) if agreed => verdicts,
        _ => check_rls(pg, &prepared, &pending).await,
    };
    apply_verdicts(&mut prepared, &verdicts, pg.rls_batch);
    let checked_at = started.elapsed();
    turn.wait().await;
    let turn_at = started.elapsed();
    for p in &prepared {
        push(p, pg.max_record_bytes);
    }
    drop(turn);
    debug!(
        changes = prepared.len(),
        ahead = agreed,
        security_ms = secured_at.as_secs_f64() * 1e3,
        rls_ms = (checked_at - secured_at).as_secs_f64() * 1e3,
        turn_ms = (turn_at - checked_at).as_secs_f64() * 1e3,
        push_ms = (started.elapsed() - turn_at).as_secs_f64() * 1e3,
        "postgres changes round"
    );
}

async fn prepare<'a>(pg: &PgChanges, subs: Arc<TableSubs>, rc: &'a RowChange, ts: &'a str) -> Option<Prepared<'a>> {
    let oid = rc.relation.id;
    if subs.channels.is_empty() {
        return None;
    }
    let table = match pg.catalog.table(oid).await {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            warn!(oid, error = %e, "cannot read the table's catalog entry: change skipped");
            return None;
        }
    };
    let kind = match rc.kind {
        ChangeKind::Insert => Action::Insert,
        ChangeKind::Update => Action::Update,
        ChangeKind::Delete => Action::Delete,
    };
    // Map the relation's columns (pgoutput order) onto the catalog's, by name.
    let map: Vec<Option<usize>> = rc.relation.columns.iter().map(|c| table.column(&c.name)).collect();
    let mut size = 0usize;
    let mut image = |t: &'a TupleData| -> Vec<Cell<'a>> {
        let mut cells = vec![Cell::Missing; table.columns.len()];
        for (i, cell) in t.0.iter().enumerate() {
            let Some(Some(target)) = map.get(i) else { continue };
            cells[*target] = match cell {
                WalCell::Null => Cell::Null,
                WalCell::Unchanged => Cell::Missing,
                WalCell::Text(b) | WalCell::Binary(b) => match std::str::from_utf8(b) {
                    Ok(s) => {
                        size += s.len();
                        Cell::Text(s)
                    }
                    Err(_) => Cell::Missing,
                },
            };
        }
        cells
    };
    let new = rc.new.as_ref().map(&mut image);
    let (old, old_is_key) = match &rc.old {
        Some(OldTuple::Key(t)) => (Some(image(t)), true),
        Some(OldTuple::Full(t)) => (Some(image(t)), false),
        None => (None, false),
    };
    // A key tuple carries NULL placeholders for non-key columns: drop them.
    let old = old.map(|mut cells| {
        if old_is_key {
            for (i, c) in cells.iter_mut().enumerate() {
                let key = rc
                    .relation
                    .columns
                    .iter()
                    .any(|rcol| rcol.flags_key && table.columns[i].name == rcol.name);
                if !key {
                    *c = Cell::Missing;
                }
            }
        }
        cells
    });
    // UPDATE with an unchanged key has no old tuple; Supabase (wal2json) reports the key
    // taken from the new row as `old_record`.
    let old = match (kind, old, &new) {
        (Action::Update, None, Some(new)) => Some(
            (0..table.columns.len())
                .map(|i| if table.pk.contains(&i) { new[i] } else { Cell::Missing })
                .collect(),
        ),
        (_, old, _) => old,
    };
    let filter_image = if kind == Action::Delete {
        old.as_ref()
    } else {
        new.as_ref()
    };
    let pk: Vec<String> = table
        .pk
        .iter()
        .map(|&i| match filter_image.and_then(|img| img.get(i)) {
            Some(Cell::Text(t)) => (*t).to_owned(),
            _ => String::new(),
        })
        .collect();

    let candidates: Vec<u32> = (0..subs.channels.len() as u32)
        .filter(|&i| {
            subs.channels[i as usize]
                .subs
                .iter()
                .any(|s| wants(s, oid, kind, filter_image.map(Vec::as_slice)))
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let visible = vec![false; candidates.len()];
    Some(Prepared {
        table,
        access: vec![None; subs.roles.len()],
        subs,
        change: Change {
            kind,
            commit_timestamp: ts,
            new,
            old,
            size,
            // Until this round's security state is read: as if RLS were on.
            rls: true,
        },
        pk,
        candidates,
        visible,
    })
}

/// Reads the round's security state in one statement: whether each table has RLS now
/// and what each role may read now. If it cannot be read, nothing of the round is
/// delivered (logged): a guess could show what a revoke or a new policy hides.
async fn read_security(pg: &PgChanges, prepared: &[Prepared<'_>]) -> Option<Arc<Security>> {
    let mut pairs: Vec<(&TableInfo, &str)> = Vec::new();
    for p in prepared {
        for role in &p.subs.roles {
            let pair = (p.table.as_ref(), role.as_str());
            if !pairs.iter().any(|(t, r)| t.oid == pair.0.oid && *r == pair.1) {
                pairs.push(pair);
            }
        }
    }
    match pg.catalog.security(&pairs).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            warn!(error = %e, changes = prepared.len(), "cannot read RLS and privileges: these changes are not delivered");
            None
        }
    }
}

/// Applies a security state: a candidate whose role no longer exists is dropped.
fn apply_security(prepared: &mut [Prepared<'_>], security: &Security) {
    for p in prepared.iter_mut() {
        let oid = p.table.oid;
        p.change.rls = security.rls(oid).unwrap_or(true);
        for (r, role) in p.subs.roles.iter().enumerate() {
            p.access[r] = security.access(oid, role);
            if p.access[r].is_none() {
                debug!(role = %role, table = %p.table.name, "role or table gone: change skipped for it");
            }
        }
        for (c, &ix) in p.candidates.iter().enumerate() {
            p.visible[c] = p.access[p.subs.role_of[ix as usize] as usize].is_some();
        }
    }
}

/// Whether `a` and `b` check the same candidates of the round: per table, RLS on or off
/// alike, and per role, present and bypassing RLS alike (column grants do not matter to
/// the checks).
fn same_checks(a: &Security, b: &Security, prepared: &[Prepared<'_>]) -> bool {
    let mut seen: Vec<u32> = Vec::new();
    for p in prepared {
        let oid = p.table.oid;
        if seen.contains(&oid) {
            continue;
        }
        seen.push(oid);
        if a.rls(oid) != b.rls(oid) {
            return false;
        }
        let bypass = |s: &Security, role: &str| s.access(oid, role).map(|x| x.bypass_rls);
        if p.subs.roles.iter().any(|role| bypass(a, role) != bypass(b, role)) {
            return false;
        }
    }
    true
}

/// One table's RLS work in a round. A group is who gets the same answers: a viewer (role
/// and claims), or a channel when RLS batching is off.
struct TableChecks {
    subs: Arc<TableSubs>,
    table: Arc<TableInfo>,
    /// The changes (indexes into the round) with a candidate waiting on a check, in order.
    rows: Vec<usize>,
    /// Per group: some candidate of it waits on a check.
    waiting: Vec<bool>,
}

impl TableChecks {
    /// The group of the table's channel `ix`.
    fn group(&self, batch: bool, ix: u32) -> usize {
        if batch {
            self.subs.viewer_of[ix as usize] as usize
        } else {
            ix as usize
        }
    }

    /// The channel standing for group `g`.
    fn representative(&self, batch: bool, g: usize) -> usize {
        if batch {
            self.subs.viewers[g] as usize
        } else {
            g
        }
    }

    fn viewer(&self, batch: bool, g: usize) -> Group<'_> {
        let ch = &self.subs.channels[self.representative(batch, g)];
        Group {
            viewer: Viewer {
                role: &ch.role,
                claims: &ch.claims,
                sub: ch.sub.as_deref(),
            },
            claims: &ch.claims,
        }
    }
}

/// Whether candidate `c` of `p` waits on an RLS check: the change is checked (not a
/// DELETE, as in Supabase; a table with RLS and a key), its role exists, and does not
/// bypass RLS.
fn waits(p: &Prepared<'_>, c: usize) -> bool {
    p.visible[c]
        && p.access[p.subs.role_of[p.candidates[c] as usize] as usize]
            .as_ref()
            .is_some_and(|a| !a.bypass_rls)
}

/// Whether `p`'s candidates are checked at all.
fn checked(p: &Prepared<'_>) -> bool {
    p.change.rls && p.change.kind != Action::Delete && !p.table.pk.is_empty()
}

/// The answers of one table's checks. Groups that share answers share a class (a viewer
/// of the shared check, its distinct policy values): the bits are (row, class), so a
/// round's cost follows rows and distinct values, not rows × viewers.
struct Verdicts {
    /// Per group: its class; `None` when it could not be checked (it sees nothing).
    class_of: Vec<Option<u32>>,
    classes: u32,
    /// Visible (row position, class) pairs.
    pairs: Vec<(u32, u32)>,
}

impl Verdicts {
    /// A new class.
    fn class(&mut self) -> u32 {
        self.classes += 1;
        self.classes - 1
    }

    /// A bit per (row position, class): set when visible.
    fn bits(&self, rows: usize) -> Vec<u64> {
        let classes = self.classes as usize;
        let mut bits = vec![0u64; (rows * classes).div_ceil(64)];
        for &(row, class) in &self.pairs {
            let at = row as usize * classes + class as usize;
            if let Some(word) = bits.get_mut(at / 64) {
                *word |= 1 << (at % 64);
            }
        }
        bits
    }
}

/// Checks which candidates may SELECT their row, per table. Tables without RLS and roles
/// with BYPASSRLS need no query.
async fn check_rls(pg: &PgChanges, prepared: &[Prepared<'_>], pending: &Pending) -> Vec<(TableChecks, Verdicts)> {
    let batch = pg.rls_batch;
    let mut tables: Vec<TableChecks> = Vec::new();
    for (pi, p) in prepared.iter().enumerate() {
        if !checked(p) {
            continue;
        }
        let at = match tables.iter().position(|t| t.table.oid == p.table.oid) {
            Some(at) => at,
            None => {
                let groups = if batch {
                    p.subs.viewers.len()
                } else {
                    p.subs.channels.len()
                };
                tables.push(TableChecks {
                    subs: p.subs.clone(),
                    table: p.table.clone(),
                    rows: Vec::new(),
                    waiting: vec![false; groups],
                });
                tables.len() - 1
            }
        };
        let t = &mut tables[at];
        let mut any = false;
        for (c, &ix) in p.candidates.iter().enumerate() {
            if waits(p, c) {
                let g = t.group(batch, ix);
                t.waiting[g] = true;
                any = true;
            }
        }
        if any {
            t.rows.push(pi);
        }
    }
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let verdicts = table_verdicts(pg, prepared, &t, pending).await;
        out.push((t, verdicts));
    }
    out
}

/// Clears the candidates the checks hid (and those no check answered: fail closed).
fn apply_verdicts(prepared: &mut [Prepared<'_>], checks: &[(TableChecks, Verdicts)], batch: bool) {
    for (t, verdicts) in checks {
        let bits = verdicts.bits(t.rows.len());
        let classes = verdicts.classes as usize;
        for (k, &pi) in t.rows.iter().enumerate() {
            let p = &mut prepared[pi];
            for c in 0..p.candidates.len() {
                if !waits(p, c) {
                    continue;
                }
                let g = t.group(batch, p.candidates[c]);
                p.visible[c] = verdicts.class_of[g].is_some_and(|class| {
                    let at = k * classes + class as usize;
                    bits.get(at / 64).is_some_and(|w| w & (1 << (at % 64)) != 0)
                });
            }
        }
    }
}

/// Checks one table's waiting groups: the shared statement per role first, then one by
/// one those it could not decide.
async fn table_verdicts(pg: &PgChanges, prepared: &[Prepared<'_>], t: &TableChecks, pending: &Pending) -> Verdicts {
    let batch = pg.rls_batch;
    let waiting: Vec<usize> = (0..t.waiting.len()).filter(|&g| t.waiting[g]).collect();
    let mut verdicts = Verdicts {
        class_of: vec![None; t.waiting.len()],
        classes: 0,
        pairs: Vec::new(),
    };
    if batch {
        let rows: Vec<Row<'_>> = t
            .rows
            .iter()
            .map(|&p| Row {
                key: &prepared[p].pk,
                image: prepared[p].filter_image(),
            })
            .collect();
        for (r, role) in t.subs.roles.iter().enumerate() {
            let of_role: Vec<usize> = waiting
                .iter()
                .copied()
                .filter(|&g| t.subs.role_of[t.representative(batch, g)] as usize == r)
                .collect();
            if of_role.is_empty() {
                continue;
            }
            let groups: Vec<Group<'_>> = of_role.iter().map(|&g| t.viewer(batch, g)).collect();
            let Some(shared) = pg
                .shared_rls
                .check(&pg.pool, &t.table, role, &groups, &rows, pending)
                .await
            else {
                continue;
            };
            let base = verdicts.classes;
            for (&g, class) in of_role.iter().zip(shared.class_of) {
                verdicts.class_of[g] = class.map(|c| base + c);
            }
            verdicts
                .pairs
                .extend(shared.pairs.iter().map(|&(row, c)| (row, base + c)));
            verdicts.classes += shared.classes;
        }
    }
    let rest: Vec<usize> = waiting
        .into_iter()
        .filter(|&g| verdicts.class_of[g].is_none())
        .collect();
    if rest.is_empty() {
        return verdicts;
    }
    // The row positions each remaining group waits on.
    let mut slot = vec![u32::MAX; t.waiting.len()];
    for (i, &g) in rest.iter().enumerate() {
        slot[g] = i as u32;
    }
    let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); rest.len()];
    for (k, &pi) in t.rows.iter().enumerate() {
        let p = &prepared[pi];
        for (c, &ix) in p.candidates.iter().enumerate() {
            let s = slot[t.group(batch, ix)];
            if s != u32::MAX && waits(p, c) {
                let rows = &mut rows_of[s as usize];
                if rows.last() != Some(&(k as u32)) {
                    rows.push(k as u32);
                }
            }
        }
    }
    let checks: Vec<Check<'_>> = rest
        .iter()
        .zip(&rows_of)
        .map(|(&g, rows)| Check {
            viewer: t.viewer(batch, g).viewer,
            rows: rows.iter().map(|&k| prepared[t.rows[k as usize]].pk.clone()).collect(),
        })
        .collect();
    pending.wait(&pg.pool).await;
    let answers = rls::visible(&pg.pool, &t.table, &checks, batch).await;
    drop(checks);
    for ((&g, rows), answer) in rest.iter().zip(&rows_of).zip(answers) {
        match answer {
            Ok(seen) => {
                let class = verdicts.class();
                verdicts.class_of[g] = Some(class);
                let visible = rows.iter().zip(seen).filter(|(_, s)| *s).map(|(&k, _)| (k, class));
                verdicts.pairs.extend(visible);
            }
            // Isolated: only this viewer misses these rows (Supabase issue #2093).
            Err(e) => {
                let role = &t.subs.channels[t.representative(batch, g)].role;
                warn!(role = %role, table = %t.table.name, error = %super::subscribe::exception_text(&e), "RLS check failed: rows skipped for this subscriber");
            }
        }
    }
    verdicts
}

/// What makes two recipients' frames of one change equal: (vsn, topic, binding ids,
/// visible columns).
type FrameKey<'a> = (Vsn, &'a str, Vec<u32>, Vec<bool>);

/// Builds and queues the frames of one change.
///
/// Encoded once per distinct (vsn, topic, binding ids, visible columns) and the bytes
/// shared, as broadcast does: with a `true` policy and a thousand subscribers of one
/// table the frames are all alike (binding ids are a hash of the binding, so equal
/// bindings have equal ids), and copying and encoding per recipient was the work.
fn push(p: &Prepared<'_>, max_record_bytes: usize) {
    let table = &p.table;
    // One `data` per distinct visible-column set, shared by every channel that has it.
    let mut built: HashMap<Vec<bool>, Vec<u8>> = HashMap::new();
    let mut frames: HashMap<FrameKey<'_>, WireFrame> = HashMap::new();
    let mut queued = 0;
    let image = p.filter_image();
    for (&ix, _) in p.candidates.iter().zip(&p.visible).filter(|(_, v)| **v) {
        let ch = &p.subs.channels[ix as usize];
        let Some(access) = &p.access[p.subs.role_of[ix as usize] as usize] else {
            continue;
        };
        // Bindings of one channel with the same select list share a frame.
        let mut by_select: Vec<(Option<&[usize]>, Vec<u32>)> = Vec::new();
        for s in ch.subs.iter().filter(|s| wants(s, table.oid, p.change.kind, image)) {
            let select = s.select.as_deref();
            match by_select.iter_mut().find(|(sel, _)| *sel == select) {
                Some((_, ids)) => ids.push(s.id),
                None => by_select.push((select, vec![s.id])),
            }
        }
        for (select, ids) in by_select {
            let columns: Vec<bool> = (0..table.columns.len())
                .map(|i| {
                    access.selectable.get(i).copied().unwrap_or(false)
                        && select.as_ref().is_none_or(|s| s.contains(&i) || table.pk.contains(&i))
                })
                .collect();
            let frame = frames
                .entry((ch.vsn, &*ch.topic, ids, columns))
                .or_insert_with_key(|(vsn, topic, ids, columns)| {
                    let pk_selectable = table
                        .pk
                        .iter()
                        .all(|&i| access.selectable.get(i).copied().unwrap_or(false));
                    let data = built
                        .entry(columns.clone())
                        .or_insert_with(|| payload::data(table, &p.change, columns, pk_selectable, max_record_bytes));
                    let mut body = Vec::with_capacity(data.len() + 32);
                    body.extend_from_slice(b"{\"ids\":");
                    let _ = serde_json::to_writer(&mut body, ids);
                    body.extend_from_slice(b",\"data\":");
                    body.extend_from_slice(data);
                    body.push(b'}');
                    encode::fastlane(*vsn, topic, "postgres_changes", &body)
                })
                .clone();
            if ch.outbox.push(frame) {
                queued += 1;
            } else {
                debug!(
                    channel = ch.channel,
                    "postgres_changes frame not queued (client gone or too slow)"
                );
            }
        }
    }
    crate::observability::metrics::out(crate::observability::metrics::Out::PostgresChanges, queued);
}
