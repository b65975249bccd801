//! Opening a session: where to connect (the config's hosts and ports), the startup packet's
//! parameters, and authentication (cleartext, MD5, SCRAM-SHA-256).

use super::*;

/// Where to connect: the config's hosts (or hostaddrs) paired with their ports.
pub(super) enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    #[cfg(unix)]
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Mirrors tokio-postgres: `hostaddr` (an IP) wins over `host` at the same index; one port
/// for all hosts or one per host; default port 5432.
pub(super) fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, WalError> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if hosts.is_empty() && addrs.is_empty() {
        return Err(WalError::Config("connection string has no host".into()));
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(WalError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    let n = hosts.len().max(addrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err(WalError::Config(format!("{} hosts but {} ports", n, ports.len())));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Target::Tcp {
                host: ip.to_string(),
                port,
            },
            (None, Some(Host::Tcp(h))) => Target::Tcp { host: h.clone(), port },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix { dir: dir.clone(), port },
            (None, None) => continue,
        };
        out.push(target);
    }
    Ok(out)
}

/// The startup parameters and credentials, validated once before any connection attempt.
pub(super) struct SessionParams {
    pub(super) user: String,
    pub(super) database: String,
    pub(super) application_name: Option<String>,
    pub(super) options: String,
    pub(super) password: Option<Vec<u8>>,
}

impl SessionParams {
    pub(super) fn from_config(config: &tokio_postgres::Config, opts: &ReplicationOptions) -> Result<Self, WalError> {
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            // `Require` and any mode added later: refusing is the only safe answer.
            _ => {
                return Err(WalError::Config(
                    "sslmode=require: TLS is not supported yet by the replication client".into(),
                ))
            }
        }
        if config.get_channel_binding() == ChannelBindingMode::Require {
            return Err(WalError::Config(
                "channel_binding=require needs TLS, which is not supported yet".into(),
            ));
        }
        validate_slot_name(&opts.slot)?;
        if opts.publication.is_empty() {
            return Err(WalError::Config("publication name is empty".into()));
        }
        let user = config
            .get_user()
            .ok_or_else(|| WalError::Config("connection string has no user".into()))?
            .to_owned();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        let application_name = if opts.application_name.is_empty() {
            config.get_application_name().map(str::to_owned)
        } else {
            Some(opts.application_name.clone())
        };
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {FORMAT_OPTIONS}"),
            _ => FORMAT_OPTIONS.to_owned(),
        };
        for (what, v) in [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("application_name", application_name.as_deref().unwrap_or("")),
            ("options", options.as_str()),
            ("publication", opts.publication.as_str()),
        ] {
            if v.contains('\0') {
                return Err(WalError::Config(format!("{what} contains a NUL byte")));
            }
        }
        Ok(SessionParams {
            user,
            database,
            application_name,
            options,
            password: config.get_password().map(<[u8]>::to_vec),
        })
    }

    pub(super) fn password(&self, method: &str) -> Result<&[u8], WalError> {
        self.password.as_deref().ok_or_else(|| {
            tracing::warn!(user = %self.user, method, "server wants a password but none is configured");
            WalError::Auth(format!(
                "server requested {method} authentication but no password was given"
            ))
        })
    }
}

/// Opens the socket to `target`, within `timeout` when one is set.
pub(super) async fn connect_socket(target: &Target, timeout: Option<Duration>) -> Result<Conn, WalError> {
    async fn bounded<T>(
        timeout: Option<Duration>,
        fut: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {t:?}")))?,
            None => fut.await,
        }
    }
    match target {
        Target::Tcp { host, port } => {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port)).await?.collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"));
            for addr in addrs {
                match bounded(timeout, TcpStream::connect(addr)).await {
                    Ok(s) => {
                        // Status updates are tiny and latency-sensitive; don't let Nagle hold them.
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY");
                        }
                        return Ok(Conn::new(Transport::Tcp(s), format!("{addr}")));
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "TCP connect failed");
                        last = e;
                    }
                }
            }
            Err(WalError::Io(last))
        }
        #[cfg(unix)]
        Target::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = bounded(timeout, UnixStream::connect(&path)).await?;
            Ok(Conn::new(Transport::Unix(s), path.display().to_string()))
        }
    }
}

/// Socket + startup + authentication, through the first ReadyForQuery.
pub(super) async fn open_session(
    target: &Target,
    timeout: Option<Duration>,
    p: &SessionParams,
) -> Result<Conn, WalError> {
    let mut conn = connect_socket(target, timeout).await?;

    let mut params: Vec<(&str, &str)> = vec![
        // pgoutput converts text values and names to the client encoding.
        ("client_encoding", "UTF8"),
        ("user", &p.user),
        ("database", &p.database),
        // Logical replication walsender bound to the database.
        ("replication", "database"),
        ("options", &p.options),
    ];
    if let Some(app) = &p.application_name {
        params.push(("application_name", app));
    }
    frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
        .map_err(|e| WalError::Config(format!("invalid startup parameter: {e}")))?;
    conn.flush_out().await?;

    authenticate(&mut conn, p).await?;

    // ParameterStatus and BackendKeyData until the server is ready.
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'S' => conn.note_parameter(&f.body),
            // BackendKeyData: cancel requests are not used.
            b'K' => {}
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "startup notice");
            }
            b'E' => return Err(frame::server_error(&f.body, "startup")),
            b'Z' => break,
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} during startup",
                    frame::printable(other)
                )))
            }
        }
    }
    tracing::info!(peer = %conn.peer, user = %p.user, database = %p.database, server_major = conn.server_major,
        "replication connection established");
    Ok(conn)
}

pub(super) async fn authenticate(conn: &mut Conn, p: &SessionParams) -> Result<(), WalError> {
    let mut scram: Option<ScramSha256> = None;
    let mut scram_verified = false;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'R' => {}
            b'E' => return Err(frame::server_error(&f.body, "authentication")),
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "authentication notice");
                continue;
            }
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} during authentication",
                    frame::printable(other)
                )))
            }
        }
        match frame::parse_auth(&f.body)? {
            AuthRequest::Ok => {
                // A server that skips SASLFinal never proved it knows the password (it could
                // be an impostor that just accepts anything).
                if scram.is_some() && !scram_verified {
                    tracing::warn!(peer = %conn.peer, "server ended SCRAM without its final message");
                    return Err(WalError::Auth("server skipped the SCRAM final message".into()));
                }
                tracing::debug!(peer = %conn.peer, "authenticated");
                return Ok(());
            }
            AuthRequest::CleartextPassword => {
                let pw = p.password("cleartext password")?;
                frontend::password_message(pw, &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode password: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::Md5Password { salt } => {
                let pw = p.password("MD5")?;
                let hash = md5_hash(p.user.as_bytes(), pw, salt);
                frontend::password_message(hash.as_bytes(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode password: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    tracing::warn!(?mechanisms, "no supported SASL mechanism offered");
                    return Err(WalError::Auth(format!("unsupported SASL mechanisms {mechanisms:?}")));
                }
                let pw = p.password("SCRAM-SHA-256")?;
                // Without TLS there is no channel to bind to: "n,," tells the server so.
                let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode SASL message: {e}")))?;
                conn.flush_out().await?;
                scram = Some(s);
            }
            AuthRequest::SaslContinue { data } => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| WalError::Protocol("SASLContinue before SASL started".into()))?;
                s.update(&data).map_err(|e| {
                    tracing::warn!(error = %e, "SCRAM server-first message rejected");
                    WalError::Auth(format!("SCRAM: {e}"))
                })?;
                frontend::sasl_response(s.message(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode SASL message: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::SaslFinal { data } => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| WalError::Protocol("SASLFinal before SASL started".into()))?;
                s.finish(&data).map_err(|e| {
                    tracing::warn!(error = %e, "SCRAM server signature verification failed");
                    WalError::Auth(format!("SCRAM server verification failed: {e}"))
                })?;
                scram_verified = true;
            }
            AuthRequest::Other(code) => {
                tracing::warn!(code, "unsupported authentication method requested");
                return Err(WalError::Auth(format!(
                    "unsupported authentication method (code {code}); use trust, password, md5 or scram-sha-256"
                )));
            }
        }
    }
}
