//! `--name value` flags and their `BENCH_NAME` environment fallbacks.

use super::*;

/// `--name value` flags, each also settable as env `BENCH_NAME` (flags win).
pub struct Params {
    flags: HashMap<String, String>,
}

impl Params {
    pub fn parse() -> Params {
        let mut flags = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                match it.peek() {
                    Some(v) if !v.starts_with("--") => {
                        let v = it.next().unwrap_or_default();
                        flags.insert(name.to_owned(), v);
                    }
                    _ => {
                        flags.insert(name.to_owned(), "true".to_owned());
                    }
                }
            }
        }
        Params { flags }
    }

    pub fn raw(&self, name: &str) -> Option<String> {
        self.flags
            .get(name)
            .cloned()
            .or_else(|| std::env::var(format!("BENCH_{}", name.to_uppercase().replace('-', "_"))).ok())
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| err(format!("--{name}: cannot parse {v:?}"))),
        }
    }

    pub fn list<T: FromStr>(&self, name: &str) -> Res<Option<Vec<T>>> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => v
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .map_err(|_| err(format!("--{name}: cannot parse {x:?}")))
                })
                .collect::<Res<Vec<T>>>()
                .map(Some),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.raw(name).is_some_and(|v| v != "false" && v != "0")
    }
}
