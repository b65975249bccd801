//! Reads a table's RLS policies for one role and decides whether its rows can be checked
//! for all viewers of that role at once ([`Plan::Shared`]) or must be checked viewer by
//! viewer as Supabase does ([`Plan::PerViewer`], with the reason).
//!
//! A policy can be shared when it depends on the viewer only through its JWT: calls of
//! zero-argument SQL functions that read nothing but the `request.jwt.*` settings
//! (`auth.uid()`, `auth.jwt()`, `auth.role()`), or `current_setting('request.jwt.claims')`
//! and its siblings. Those calls are replaced by columns of a list of viewer groups, so
//! one statement joins the round's rows with every group: a policy like
//! `user_id = auth.uid()` becomes a hash join instead of one probe per viewer.
//!
//! Everything the rewrite relies on is read as one JSON document, the *guard*: the
//! policies as Postgres prints them, the functions and relations they reference (with
//! the role's privileges on them), the table's RLS flags, whether the role owns it or
//! bypasses RLS. The shared statement computes the guard again in the same snapshot as
//! its check and returns nothing but a mismatch marker when it differs, so a policy,
//! grant or function changed since the plan was made can never be applied stale: the
//! caller then checks viewer by viewer and plans again.
//!
//! What the classifier does not understand falls back: other functions (security
//! definer helpers, `current_user`, volatile calls), relations with RLS of their own or
//! not readable by the role, views, restrictive policies without a `USING` clause.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde::Deserialize;

use super::catalog::{quote_ident, TableInfo};
use super::group_equality::{required_equality, GroupEquality};
use super::row_key::row_key;
use super::sql_tokens::{tokenize, Token};

/// The guard document for table `$1`, role `$2` and the `pg_catalog` functions named in
/// `$3`, built from what a per-viewer check would depend on. Run with
/// `search_path = pg_catalog` (see [`SHARED_SETTINGS`]) so every object outside
/// `pg_catalog` is printed schema-qualified.
pub const GUARD: &str = "jsonb_build_object(\
 'table', (select jsonb_build_object('qualified', quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'schema', n.nspname, 'name', c.relname, 'rls', c.relrowsecurity, \
    'force', c.relforcerowsecurity, 'owner', pg_has_role($2::text::name, c.relowner, 'USAGE'), \
    'columns', (select jsonb_agg(a.attname order by a.attnum) from pg_attribute a \
                where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), \
    'pk_selectable', (select coalesce(bool_and(has_column_privilege($2::text::name, c.oid, a.attnum, 'SELECT')), false) \
                from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
                where i.indrelid = c.oid and i.indisprimary)) \
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = $1::oid), \
 'bypass', (select r.rolsuper or r.rolbypassrls from pg_roles r where r.rolname = $2::text), \
 'policies', (select jsonb_agg(jsonb_build_object('name', p.polname, 'permissive', p.polpermissive, \
    'cmd', p.polcmd, 'qual', pg_get_expr(p.polqual, p.polrelid), \
    'applies', 0::oid = any(p.polroles) or exists (select from unnest(p.polroles) pr where pg_has_role($2::text::name, pr, 'USAGE'))) \
    order by p.polname) from pg_policy p where p.polrelid = $1::oid), \
 'functions', (select jsonb_agg(jsonb_build_object('call', quote_ident(n.nspname) || '.' || quote_ident(f.proname), \
    'args', f.pronargs, 'sql', f.prolang = (select l.oid from pg_language l where l.lanname = 'sql'), \
    'volatility', f.provolatile, 'definer', f.prosecdef, 'config', f.proconfig, 'set', f.proretset, \
    'returns', format_type(f.prorettype, null), 'src', f.prosrc, 'atomic', f.prosqlbody is not null, \
    'execute', has_function_privilege($2::text::name, f.oid, 'EXECUTE')) order by f.oid) \
    from pg_proc f join pg_namespace n on n.oid = f.pronamespace \
    where f.oid in (select d.refobjid from pg_depend d where d.classid = 'pg_policy'::regclass \
      and d.refclassid = 'pg_proc'::regclass and d.objid in (select p.oid from pg_policy p where p.polrelid = $1::oid))), \
 'relations', (select jsonb_agg(jsonb_build_object('name', quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
    'kind', c.relkind, 'rls', c.relrowsecurity, 'select', has_table_privilege($2::text::name, c.oid, 'SELECT')) order by c.oid) \
    from pg_class c join pg_namespace n on n.oid = c.relnamespace \
    where c.oid <> $1::oid and c.oid in (select d.refobjid from pg_depend d where d.classid = 'pg_policy'::regclass \
      and d.refclassid = 'pg_class'::regclass and d.objid in (select p.oid from pg_policy p where p.polrelid = $1::oid))), \
 'builtins', (select coalesce(bool_and(has_function_privilege($2::text::name, f.oid, 'EXECUTE')), true) from pg_proc f \
    where f.pronamespace = 'pg_catalog'::regnamespace and f.proname = any($3::text[])))";

/// Settings of the transaction a guard is read or a shared check runs in: objects are
/// printed qualified, and a table whose RLS would apply to our own login (which must
/// bypass it for the rewrite to be the only filter) is an error, not an empty answer.
/// Sequential scans are off for the reason given at `rls::BEGIN`: a kept plan made when
/// the table was empty must not scan it once it has grown.
///
/// Plans are custom, made for each round: the statement joins arrays whose lengths (rows
/// of the round, viewer groups) decide the join. A generic plan assumes ten elements
/// each and, with a membership policy, rescans a thousand groups per (row, member): 1.3 s
/// for 20 rows instead of 3 ms. The guard keeps its own generic plan ([`GUARD_FUNCTION`]),
/// so planning a round stays well under a millisecond. A round of 512 rows with a
/// hundred viewers each joins 51,200 pairs: `work_mem` keeps its sort or hash in memory
/// (with the default 4 MB it spilled 1.7 MB to disk).
pub const SHARED_SETTINGS: &str = "begin; set local search_path = pg_catalog; set local row_security = off; \
     set local enable_seqscan = off; set local plan_cache_mode = force_custom_plan; set local work_mem = '32MB'";

/// Name of the per-connection function that computes the [`GUARD`] document.
pub const GUARD_FUNCTION: &str = "pg_temp.rs_guard";

/// Creates [`GUARD_FUNCTION`]`(table, role, builtins)`. PL/pgSQL keeps its plan for the
/// session (generic: nothing in it depends on array lengths), where an inline guard was
/// planned again with every round, 3 ms of catalog joins. STABLE, so it reads the snapshot
/// of the statement that calls it: the guard and the check still see the same catalog.
pub fn guard_function_sql() -> String {
    format!(
        "create or replace function {GUARD_FUNCTION}(oid, text, text[]) returns jsonb language plpgsql stable \
         set plan_cache_mode = force_generic_plan as $rs_guard$ begin return {GUARD}; end $rs_guard$"
    )
}

/// The guard as read: the parts the classifier uses (the rest is compared whole).
#[derive(Debug, Deserialize)]
pub struct Guard {
    table: Option<GuardTable>,
    bypass: Option<bool>,
    policies: Option<Vec<GuardPolicy>>,
    functions: Option<Vec<GuardFunction>>,
    relations: Option<Vec<GuardRelation>>,
    builtins: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct GuardTable {
    qualified: String,
    schema: String,
    name: String,
    rls: bool,
    force: bool,
    owner: bool,
    columns: Option<Vec<String>>,
    pk_selectable: bool,
}

#[derive(Debug, Deserialize)]
struct GuardPolicy {
    name: String,
    permissive: bool,
    cmd: String,
    qual: Option<String>,
    applies: bool,
}

#[derive(Debug, Deserialize)]
struct GuardFunction {
    call: String,
    args: i64,
    sql: bool,
    volatility: String,
    definer: bool,
    config: Option<Vec<String>>,
    set: bool,
    returns: String,
    src: Option<String>,
    atomic: bool,
    execute: bool,
}

#[derive(Debug, Deserialize)]
struct GuardRelation {
    name: String,
    kind: String,
    rls: bool,
    select: bool,
}

/// How a (table, role) pair's rows are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One statement for every viewer group.
    Shared(SharedPlan),
    /// One check per viewer; the reason, for the log.
    PerViewer(String),
}

/// A viewer value the shared statement reads from its group list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupValue {
    /// The result of a claims-only function, as text, cast back to `returns`.
    Function { call: String, returns: String },
    /// `request.jwt.claims`.
    Claims,
    /// `request.jwt.claim.sub`.
    Sub,
    /// `request.jwt.claim.role`.
    Role,
}

/// The rewritten check of one (table, role) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPlan {
    /// The policies' combined `USING` clause, its viewer reads replaced by
    /// `__rs_g.__rs_v<i>` (index into `values`).
    pub qual: String,
    /// What each group must carry, in column order.
    pub values: Vec<GroupValue>,
    /// `pg_catalog` functions the policies call (their EXECUTE privilege is guarded).
    pub builtins: Vec<String>,
    /// Identifies the claims-only functions' definitions (for caching their values).
    pub functions_digest: u64,
    /// A column every visible row holds equal to a group value (only the groups whose
    /// value is among a round's rows need asking).
    pub equality: Option<GroupEquality>,
    /// The columns the policies read of their row, when nothing else of it: rows equal
    /// in them get the same answers, so one of each is checked.
    pub row_key: Option<Vec<usize>>,
}

impl SharedPlan {
    /// The calls of the claims-only functions, in column order.
    pub fn function_calls(&self) -> Vec<(usize, &str)> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                GroupValue::Function { call, .. } => Some((i, call.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// `pg_catalog` functions a policy may call: they depend only on their arguments (or on
/// the clock), never on who runs them.
const BUILTINS: &[&str] = &[
    "lower",
    "upper",
    "length",
    "char_length",
    "btrim",
    "ltrim",
    "rtrim",
    "substr",
    "strpos",
    "split_part",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "starts_with",
    "abs",
    "round",
    "floor",
    "ceil",
    "mod",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_typeof",
    "jsonb_array_length",
    "jsonb_exists",
    "json_extract_path_text",
    "array_length",
    "cardinality",
    "array_position",
    "unnest",
    "count",
    "min",
    "max",
    "sum",
    "bool_or",
    "bool_and",
    "now",
    "date_trunc",
    "date_part",
    "to_timestamp",
    "int4",
    "int8",
    "text",
    "uuid",
];

/// Words that may stand before `(` without being a function call.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "exists",
    "any",
    "all",
    "some",
    "in",
    "array",
    "select",
    "from",
    "where",
    "on",
    "join",
    "as",
    "case",
    "when",
    "then",
    "else",
    "end",
    "is",
    "distinct",
    "between",
    "like",
    "ilike",
    "similar",
    "row",
    "values",
    "lateral",
    "using",
    "having",
    "by",
    "group",
    "order",
    "limit",
    "offset",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "inner",
    "left",
    "right",
    "full",
    "outer",
    "cross",
    "natural",
    "union",
    "intersect",
    "except",
    "with",
    "filter",
    "over",
    "trim",
    "position",
    "substring",
    "extract",
    "overlay",
    "true",
    "false",
    "null",
    "escape",
    "symmetric",
];

/// Words that read the session's user: a policy using them depends on the role in a way
/// the rewrite does not model.
const SESSION_WORDS: &[&str] = &[
    "current_user",
    "session_user",
    "current_role",
    "user",
    "current_catalog",
    "current_schema",
];

/// The settings a per-viewer check sets, and what the group list carries for each.
const SETTINGS: &[(&str, GroupValue)] = &[
    ("request.jwt.claims", GroupValue::Claims),
    ("request.jwt.claim.sub", GroupValue::Sub),
    ("request.jwt.claim.role", GroupValue::Role),
];

/// Decides how the rows of `table` are checked for `role`, from its guard document.
pub fn classify(table: &TableInfo, guard: &Guard) -> Plan {
    match shared(table, guard) {
        Ok(plan) => Plan::Shared(plan),
        Err(reason) => Plan::PerViewer(reason),
    }
}

fn shared(table: &TableInfo, guard: &Guard) -> Result<SharedPlan, String> {
    let t = guard.table.as_ref().ok_or("the table is gone")?;
    let own = format!("{}.{}", quote_ident_min(&table.schema), quote_ident_min(&table.name));
    if t.schema != table.schema || t.name != table.name || t.qualified != own {
        return Err("the table was renamed".into());
    }
    if !t.rls {
        return Err("RLS is off".into());
    }
    if guard.bypass != Some(false) {
        return Err("the role bypasses RLS or does not exist".into());
    }
    if t.owner && !t.force {
        return Err("the role owns the table (RLS does not apply to it)".into());
    }
    if !t.pk_selectable {
        return Err("the role may not read the primary key".into());
    }
    if t.columns.iter().flatten().any(|c| c.starts_with("__rs_")) {
        return Err("a column name starts with __rs_".into());
    }
    if guard.builtins == Some(false) {
        return Err("the role may not execute a function the policies call".into());
    }
    for r in guard.relations.iter().flatten() {
        if !matches!(r.kind.as_str(), "r" | "p") {
            return Err(format!("a policy reads {}, which is not a table", r.name));
        }
        if r.rls {
            return Err(format!("a policy reads {}, which has RLS of its own", r.name));
        }
        if !r.select {
            return Err(format!("the role may not read {}, which a policy reads", r.name));
        }
    }
    let functions: HashMap<&str, &GuardFunction> =
        guard.functions.iter().flatten().map(|f| (f.call.as_str(), f)).collect();

    let mut rewriter = Rewriter {
        own: t.qualified.clone(),
        functions: &functions,
        values: Vec::new(),
        builtins: Vec::new(),
    };
    let mut permissive = Vec::new();
    let mut restrictive = Vec::new();
    for p in guard.policies.iter().flatten() {
        if !p.applies || !matches!(p.cmd.as_str(), "r" | "*") {
            continue;
        }
        let qual = p
            .qual
            .as_deref()
            .ok_or_else(|| format!("policy {:?} has no USING clause", p.name))?;
        let rewritten = rewriter
            .rewrite(qual)
            .map_err(|e| format!("policy {:?}: {e}", p.name))?;
        if p.permissive {
            permissive.push(rewritten);
        } else {
            restrictive.push(rewritten);
        }
    }
    // What must hold for a row to be visible: every restrictive policy, and the
    // permissive one when it is alone.
    let mut required: Vec<&str> = restrictive.iter().map(String::as_str).collect();
    if let [only] = permissive.as_slice() {
        required.push(only);
    }
    let equality = required_equality(&required, table, &rewriter.values);
    let all_quals: Vec<&str> = permissive.iter().chain(&restrictive).map(String::as_str).collect();
    // Without the table's full column list, any word might be a column: no key.
    let row_key = t.columns.as_deref().and_then(|all| row_key(&all_quals, table, all));
    // Postgres: no permissive policy means no row; restrictive ones all must pass.
    let mut qual = if permissive.is_empty() {
        "false".to_owned()
    } else {
        format!("(({}))", permissive.join(") or ("))
    };
    for r in restrictive {
        qual = format!("{qual} and ({r})");
    }
    let mut h = std::hash::DefaultHasher::new();
    for v in &rewriter.values {
        if let GroupValue::Function { call, .. } = v {
            if let Some(f) = functions.get(call.as_str()) {
                (&f.call, &f.src, &f.returns, &f.volatility).hash(&mut h);
            }
        }
    }
    let mut builtins = rewriter.builtins;
    builtins.sort();
    builtins.dedup();
    Ok(SharedPlan {
        qual,
        values: rewriter.values,
        builtins,
        functions_digest: h.finish(),
        equality,
        row_key,
    })
}

struct Rewriter<'a> {
    /// The table as Postgres prints it qualified (`public.todos`).
    own: String,
    functions: &'a HashMap<&'a str, &'a GuardFunction>,
    values: Vec<GroupValue>,
    builtins: Vec<String>,
}

impl Rewriter<'_> {
    /// The column of the group list carrying `v`.
    fn column(&mut self, v: GroupValue) -> String {
        let i = match self.values.iter().position(|x| *x == v) {
            Some(i) => i,
            None => {
                self.values.push(v);
                self.values.len() - 1
            }
        };
        format!("__rs_g.__rs_v{i}")
    }

    fn rewrite(&mut self, qual: &str) -> Result<String, String> {
        let tokens = tokenize(qual)?;
        let mut out: Vec<String> = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            let tok = tokens[i];
            let next = tokens.get(i + 1).copied();
            match tok {
                Token::Cast => {
                    // A type name: not a call even when a modifier `(n)` follows.
                    let end = skip_type(&tokens, i + 1)?;
                    out.extend(tokens[i..end].iter().map(|t| t.text().to_owned()));
                    i = end;
                    continue;
                }
                Token::Word(w) if w.eq_ignore_ascii_case("operator") => {
                    return Err("it uses an operator outside pg_catalog".into())
                }
                Token::Word(w) | Token::Quoted(w) if w.trim_matches('"').starts_with("__rs_") => {
                    return Err("it names something starting with __rs_".into())
                }
                Token::Word(w) if SESSION_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s)) => {
                    return Err(format!("it reads {}", w.to_ascii_lowercase()))
                }
                _ => {}
            }
            // `schema.name(`: a function outside pg_catalog; `schema.name`: a relation or
            // a qualified column.
            if let (Token::Word(_) | Token::Quoted(_), Some(Token::Punct('.'))) = (tok, next) {
                let Some(second @ (Token::Word(_) | Token::Quoted(_))) = tokens.get(i + 2).copied() else {
                    return Err("it has a qualified name Postgres would not print".into());
                };
                let qualified = format!("{}.{}", tok.text(), second.text());
                if tokens.get(i + 3) == Some(&Token::Punct('(')) {
                    let f = self
                        .functions
                        .get(qualified.as_str())
                        .ok_or_else(|| format!("it calls {qualified}, which is not known"))?;
                    if tokens.get(i + 4) != Some(&Token::Punct(')')) {
                        return Err(format!("it calls {qualified} with arguments"));
                    }
                    claims_only(f).map_err(|why| format!("it calls {qualified}, which {why}"))?;
                    out.push(self.column(GroupValue::Function {
                        call: qualified,
                        returns: f.returns.clone(),
                    }));
                    i += 5;
                    continue;
                }
                if qualified == self.own {
                    return Err("it reads its own table".into());
                }
                out.push(qualified);
                i += 3;
                continue;
            }
            match (tok, next) {
                (Token::Word(w), Some(Token::Punct('('))) if !is_keyword(w) => {
                    let name = w.to_ascii_lowercase();
                    if name == "current_setting" {
                        let (value, end) = setting_call(&tokens, i)?;
                        out.push(self.column(value));
                        i = end;
                        continue;
                    }
                    if !BUILTINS.contains(&name.as_str()) {
                        return Err(format!(
                            "it calls {w}, which is not known to depend only on its arguments"
                        ));
                    }
                    self.builtins.push(name);
                }
                (Token::Quoted(w), Some(Token::Punct('('))) => {
                    return Err(format!("it calls {w}, which is not known"));
                }
                // Unqualified relations are system catalogs (everything else is printed
                // with its schema): their privileges are not modelled.
                (Token::Word(w), _) if w.starts_with("pg_") => {
                    return Err(format!("it reads {w}"));
                }
                _ => {}
            }
            out.push(tok.text().to_owned());
            i += 1;
        }
        Ok(out.join(" "))
    }
}

/// Identifiers as Postgres' `quote_ident` prints them: quoted only when needed.
fn quote_ident_min(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !is_keyword(name) {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

fn is_keyword(w: &str) -> bool {
    KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k))
}

/// The index after the type name starting at `at` (after `::`): one possibly qualified
/// name, the multi-word names Postgres prints, a modifier and array brackets.
fn skip_type(tokens: &[Token<'_>], at: usize) -> Result<usize, String> {
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
        _ => None,
    };
    let mut i = at;
    let first = match tokens.get(i) {
        Some(Token::Word(w)) => w.to_ascii_lowercase(),
        Some(Token::Quoted(_)) => String::new(),
        _ => return Err("a cast without a type".into()),
    };
    i += 1;
    if tokens.get(i) == Some(&Token::Punct('.')) {
        i += 2;
    }
    match first.as_str() {
        "character" | "bit" if word(i).as_deref() == Some("varying") => i += 1,
        "double" if word(i).as_deref() == Some("precision") => i += 1,
        _ => {}
    }
    if tokens.get(i) == Some(&Token::Punct('(')) {
        while tokens.get(i).is_some_and(|t| *t != Token::Punct(')')) {
            if !matches!(tokens.get(i), Some(Token::Punct('(' | ',') | Token::Number(_))) {
                return Err("a type modifier that is not a number".into());
            }
            i += 1;
        }
        i += 1;
    }
    if matches!(first.as_str(), "timestamp" | "time")
        && matches!(word(i).as_deref(), Some("with" | "without"))
        && word(i + 1).as_deref() == Some("time")
        && word(i + 2).as_deref() == Some("zone")
    {
        i += 3;
    }
    while tokens.get(i) == Some(&Token::Punct('[')) && tokens.get(i + 1) == Some(&Token::Punct(']')) {
        i += 2;
    }
    Ok(i)
}

/// `current_setting('request.jwt.claims'::text[, true])` starting at `at`: what it reads
/// and the index after the call. Any other setting is not modelled.
fn setting_call(tokens: &[Token<'_>], at: usize) -> Result<(GroupValue, usize), String> {
    let mut i = at + 2;
    let name = tokens
        .get(i)
        .and_then(Token::string_value)
        .ok_or("it calls current_setting with a computed name")?;
    i += 1;
    if tokens.get(i) == Some(&Token::Cast) {
        i = skip_type(tokens, i + 1)?;
    }
    if tokens.get(i) == Some(&Token::Punct(',')) {
        // missing_ok: the settings are always set for a viewer, so it changes nothing.
        if !matches!(tokens.get(i + 1), Some(t) if t.is_word("true") || t.is_word("false")) {
            return Err("it calls current_setting with a computed flag".into());
        }
        i += 2;
    }
    if tokens.get(i) != Some(&Token::Punct(')')) {
        return Err("it calls current_setting in a way not understood".into());
    }
    let value = SETTINGS
        .iter()
        .find(|(s, _)| *s == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("it reads the setting {name}"))?;
    Ok((value, i + 1))
}

/// Whether `f` reads only the `request.jwt.*` settings: then its value is a function of
/// the viewer's (role, claims, sub) and can be computed once per viewer group.
fn claims_only(f: &GuardFunction) -> Result<(), String> {
    if f.args != 0 || f.set {
        return Err("takes arguments or returns a set".into());
    }
    if !f.sql || f.atomic {
        return Err("is not a plain SQL function".into());
    }
    if f.volatility == "v" {
        return Err("is volatile".into());
    }
    if f.definer || f.config.is_some() {
        return Err("is security definer or sets configuration".into());
    }
    if !f.execute {
        return Err("may not be executed by the role".into());
    }
    let src = f.src.as_deref().unwrap_or_default();
    let tokens = tokenize(src)?;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        match t {
            Token::Word(w) if w.eq_ignore_ascii_case("current_setting") => {
                let Some(name) = tokens.get(i + 2).and_then(Token::string_value) else {
                    return Err("reads a computed setting".into());
                };
                if !name.starts_with("request.jwt.") {
                    return Err(format!("reads the setting {name}"));
                }
            }
            Token::Word(w) if tokens.get(i + 1) == Some(&Token::Punct('(')) => {
                let allowed = matches!(w.to_ascii_lowercase().as_str(), "coalesce" | "nullif");
                if !allowed {
                    return Err(format!("calls {w}"));
                }
            }
            // Type names after a cast are skipped below; any other word could be a
            // table, a column or a session word.
            Token::Word(w) => {
                let allowed = matches!(w.to_ascii_lowercase().as_str(), "select" | "true" | "false" | "null");
                if !allowed {
                    return Err(format!("reads {w}"));
                }
            }
            Token::Cast => {
                i = skip_type(&tokens, i + 1)?;
                continue;
            }
            Token::Op(op) if !matches!(op, "->" | "->>" | "#>" | "#>>") => return Err(format!("uses {op}")),
            Token::Quoted(q) => return Err(format!("reads {q}")),
            Token::Punct('.') => return Err("names a qualified object".into()),
            Token::Punct(';') if i + 1 != tokens.len() => return Err("has several statements".into()),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_changes::catalog::ColumnInfo;

    fn table() -> TableInfo {
        let col = |n: &str| ColumnInfo {
            name: n.into(),
            type_name: "text".into(),
            type_oid: 25,
            sql_type: "text".into(),
        };
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "todos".into(),
            columns: vec![col("id"), col("user_id"), col("team")],
            pk: vec![0],
        }
    }

    const UID: &str = "select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),\n (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid";

    fn guard(policies: &[(&str, bool, &str)]) -> Guard {
        let policies: Vec<serde_json::Value> = policies
            .iter()
            .map(|(name, permissive, qual)| {
                serde_json::json!({"name": name, "permissive": permissive, "cmd": "r", "qual": qual, "applies": true})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "table": {"qualified": "public.todos", "schema": "public", "name": "todos", "rls": true, "force": false, "owner": false,
                      "columns": ["id", "user_id", "team"], "pk_selectable": true},
            "bypass": false,
            "policies": policies,
            "functions": [
                {"call": "auth.uid", "args": 0, "sql": true, "volatility": "s", "definer": false, "config": null,
                 "set": false, "returns": "uuid", "src": UID, "atomic": false, "execute": true},
                {"call": "public.is_member", "args": 1, "sql": true, "volatility": "s", "definer": true, "config": null,
                 "set": false, "returns": "boolean", "src": "select true", "atomic": false, "execute": true}
            ],
            "relations": [{"name": "public.members", "kind": "r", "rls": false, "select": true}],
            "builtins": true
        }))
        .unwrap()
    }

    #[test]
    fn the_owner_shape_becomes_a_join_on_the_group_s_uid() {
        let Plan::Shared(p) = classify(&table(), &guard(&[("own", true, "(user_id = auth.uid())")])) else {
            panic!("not shared")
        };
        assert_eq!(p.qual, "((( user_id = __rs_g.__rs_v0 )))");
        assert_eq!(
            p.values,
            vec![GroupValue::Function {
                call: "auth.uid".into(),
                returns: "uuid".into()
            }]
        );
    }

    #[test]
    fn membership_claims_and_restrictive_policies_combine() {
        let g = guard(&[
            (
                "team",
                true,
                "(EXISTS ( SELECT 1 FROM public.members m WHERE ((m.team = todos.team) AND (m.user_id = auth.uid()))))",
            ),
            (
                "claim",
                true,
                "(team = ((current_setting('request.jwt.claims'::text, true))::jsonb ->> 'team'::text))",
            ),
            ("only", false, "(lower(team) <> 'archived'::text)"),
        ]);
        let Plan::Shared(p) = classify(&table(), &g) else {
            panic!("not shared")
        };
        assert!(p.qual.contains("m.user_id = __rs_g.__rs_v0"), "{}", p.qual);
        assert!(p.qual.contains("__rs_g.__rs_v1 ) :: jsonb"), "{}", p.qual);
        assert!(
            p.qual.ends_with(") and (( lower ( team ) <> 'archived' :: text ))"),
            "{}",
            p.qual
        );
        assert_eq!(p.values[1], GroupValue::Claims);
        assert_eq!(p.builtins, vec!["lower".to_owned()]);
    }

    #[test]
    fn what_is_not_understood_falls_back_with_a_reason() {
        for (qual, why) in [
            ("(user_id = (current_user)::uuid)", "current_user"),
            ("public.is_member(team)", "arguments"),
            ("(team = current_setting('app.team'::text))", "app.team"),
            (
                "(EXISTS ( SELECT 1 FROM pg_roles r WHERE r.rolname = team))",
                "pg_roles",
            ),
            (
                "(EXISTS ( SELECT 1 FROM public.todos t2 WHERE t2.id = id))",
                "own table",
            ),
            ("(team OPERATOR(public.===) 'x'::text)", "operator"),
            ("(random() < 0.5)", "random"),
        ] {
            match classify(&table(), &guard(&[("p", true, qual)])) {
                Plan::PerViewer(reason) => assert!(reason.contains(why), "{qual}: {reason}"),
                Plan::Shared(p) => panic!("{qual} was shared as {}", p.qual),
            }
        }
    }

    #[test]
    fn no_permissive_policy_shows_nothing() {
        let Plan::Shared(p) = classify(&table(), &guard(&[("r", false, "(team = 'a'::text)")])) else {
            panic!("not shared")
        };
        assert!(p.qual.starts_with("false and"));
    }

    #[test]
    fn claims_only_functions_are_recognised() {
        let f = |src: &str| GuardFunction {
            call: "auth.x".into(),
            args: 0,
            sql: true,
            volatility: "s".into(),
            definer: false,
            config: None,
            set: false,
            returns: "text".into(),
            src: Some(src.into()),
            atomic: false,
            execute: true,
        };
        assert!(claims_only(&f(UID)).is_ok());
        assert!(claims_only(&f("select coalesce(nullif(current_setting('request.jwt.claim', true), ''), nullif(current_setting('request.jwt.claims', true), ''))::jsonb")).is_ok());
        assert!(claims_only(&f("select team from public.members limit 1")).is_err());
        assert!(claims_only(&f("select current_user::text")).is_err());
        assert!(claims_only(&f("select current_setting('app.x', true)")).is_err());
    }
}
