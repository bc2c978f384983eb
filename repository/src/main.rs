//! `collective-repo`: the administrator's CLI for an appliance repository.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use appliance::{KdfParams, NetworkAttachment, RecoveryPublicKey, RecoverySecretKey, SecretKey};
use clap::{Parser, Subcommand};
use repository::error::{Error, Result};
use repository::gc::GcOptions;
use repository::image::Change;
use repository::publish::{DiskSpec, PublishRequest};
use repository::server::{Limits, ServeConfig};
use repository::{fsutil, users, Repo};
use support::size::parse as parse_size;

#[derive(Parser)]
#[command(
    name = "collective-repo",
    version,
    about = "Keep appliances and users in a Collective repository, and serve it."
)]
struct Cli {
    /// The repository directory for commands that do not take it as an argument.
    #[arg(
        short = 'r',
        long = "repo",
        env = "COLLECTIVE_REPO",
        default_value = ".",
        global = true
    )]
    repo: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty repository in DIR.
    Init {
        /// The directory to create the repository in (made if missing; must be empty).
        dir: PathBuf,
    },
    /// Make a publisher key pair: PREFIX.key (secret, keep it safe) and PREFIX.pub (build it
    /// into the terminal image as a trusted key).
    Keygen {
        /// PREFIX of the two files written: PREFIX.key and PREFIX.pub.
        #[arg(long, default_value = "publisher")]
        out: PathBuf,
    },
    /// Publish a new version of an appliance.
    Publish {
        /// The repository directory.
        dir: PathBuf,
        /// The appliance's name (letters, digits, '-', '_'); the version is the next one.
        #[arg(long)]
        name: String,
        /// The guest kernel (bzImage or ELF vmlinux).
        #[arg(long)]
        kernel: PathBuf,
        /// The guest's initrd, if it has one.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// The guest kernel's command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// ROLE=IMAGE or ROLE=SIZE, ROLE being system or user (repeatable, guest order).
        #[arg(long = "disk", required = true)]
        disks: Vec<String>,
        /// Guest memory in MiB.
        #[arg(long)]
        memory: u64,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: u32,
        /// An appliance network to join: NAME or NAME=MAC (repeatable, guest NIC order).
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Chunk size (power of two, 4K to 4M).
        #[arg(long, default_value = "64K")]
        chunk_size: String,
        /// Boot trace: lines `BLOB OFFSET` in first-read order.
        #[arg(long)]
        boot_trace: Option<PathBuf>,
        /// Give the appliance a screen, keyboard and pointer (virtio-gpu, a virtio keyboard
        /// and tablet), shown on the terminal's monitor; without it the appliance has only
        /// its serial console.
        #[arg(long)]
        display: bool,
        /// The publisher's secret key file (from keygen).
        #[arg(long, env = "COLLECTIVE_KEY", default_value = "publisher.key")]
        key: PathBuf,
    },
    /// Make or change ext4 disk images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage appliance sets.
    #[command(subcommand)]
    Set(SetCmd),
    /// The organisation's recovery key: lets an administrator give a user a new password
    /// without losing the user's data.
    #[command(subcommand)]
    Recovery(RecoveryCmd),
    /// Move a repository made by an older collective-repo to this layout (user data
    /// sealed); lists users and user disks still in the clear.
    Upgrade {
        /// The repository directory.
        dir: PathBuf,
    },
    /// List appliances (with versions) and users (with sets).
    List,
    /// Remove chunks that no manifest refers to. Safe while publishes and uploads run.
    Gc {
        /// Unreferenced chunks younger than this many seconds are kept.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        /// Also delete all but the newest N versions of each appliance first.
        #[arg(long)]
        keep_versions: Option<usize>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the repository as a terminal would: signatures, missing and corrupt chunks.
    Verify {
        /// Trusted public key files (from keygen); without any, signatures are not checked.
        #[arg(long = "trusted")]
        trusted: Vec<PathBuf>,
        /// Also decode and hash every stored chunk (reads the whole repository).
        #[arg(long)]
        chunks: bool,
    },
    /// Serve the repository over HTTP or HTTPS.
    Serve {
        /// The repository directory.
        dir: PathBuf,
        /// Address and port to listen on (0.0.0.0:PORT for every interface).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM: PKCS#8, RSA or EC; with --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Access log file (default DIR/logs/access.log).
        #[arg(long)]
        access_log: Option<PathBuf>,
        /// API handlers (logins, uploads, commits) running at once.
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Connections open at once, all clients together (capped by the file limit).
        #[arg(long, default_value_t = Limits::default().max_connections)]
        max_connections: usize,
        /// Connections open at once from one client address.
        #[arg(long, default_value_t = Limits::default().max_connections_per_client)]
        max_connections_per_client: usize,
        /// Request bodies being received at once from one client address.
        #[arg(long, default_value_t = Limits::default().max_bodies_per_client)]
        max_bodies_per_client: usize,
        /// Seconds a connection may make no progress (idle keep-alive, stalled transfer).
        #[arg(long, default_value_t = Limits::default().io_timeout.as_secs())]
        io_timeout: u64,
        /// A reverse proxy in front (the nginx front): its connections are not limited per
        /// address, and its requests' client is the last X-Forwarded-For entry. Repeatable.
        #[arg(long = "trusted-proxy", value_name = "IP")]
        trusted_proxies: Vec<std::net::IpAddr>,
        /// Bytes each user's user disks may hold in the repository (e.g. 20G); none by default.
        #[arg(long)]
        user_quota: Option<String>,
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Make an ext4 image from a directory, reproducibly.
    Create {
        /// The directory tree that becomes the image's root.
        src: PathBuf,
        /// The image file to write.
        #[arg(long)]
        out: PathBuf,
        /// Image size: bytes, or with a K/M/G suffix (powers of 1024).
        #[arg(long)]
        size: String,
        /// The ext4 volume label.
        #[arg(long, default_value = "system")]
        label: String,
    },
    /// Change an image in place, keeping unchanged files where they are (copy the previous
    /// version's image first, then update the copy).
    Update {
        /// The image to change in place (a copy of the previous version's).
        image: PathBuf,
        /// HOST=GUEST: copy a host file or tree to an absolute path in the image.
        #[arg(long = "add")]
        add: Vec<String>,
        /// GUEST: remove a file from the image.
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is asked for, or read from standard input if it is not a terminal.
    Add {
        /// The user name.
        name: String,
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Change a user's password (ends the user's open sessions). The user's data key is
    /// re-wrapped with --recovery-key; without it the user's data cannot be kept, and
    /// only --discard-data goes ahead (a new key, the user's disks removed).
    Passwd {
        /// The user name.
        name: String,
        /// The organisation's recovery secret key (from `recovery keygen`): keeps the data.
        #[arg(long, value_name = "FILE", conflicts_with = "discard_data")]
        recovery_key: Option<PathBuf>,
        /// Give the user a new data key: every user disk of theirs becomes unreadable and
        /// is removed.
        #[arg(long)]
        discard_data: bool,
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Remove a user (their user disks are kept; their open sessions end).
    Remove {
        /// The user name.
        name: String,
    },
}

#[derive(Subcommand)]
enum RecoveryCmd {
    /// Make a recovery key pair: PREFIX.key (keep it offline) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, default_value = "recovery")]
        out: PathBuf,
    },
    /// Install a recovery public key: data keys made from now on are sealed to it too.
    Install {
        /// The .pub file from `recovery keygen`.
        public_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum SetCmd {
    /// Set a user's appliance set (replaces the old one), in start order.
    Assign {
        /// The user name.
        user: String,
        /// Appliance names, in start order (none: an empty set).
        appliances: Vec<String>,
    },
}

fn kdf(insecure: bool) -> KdfParams {
    if insecure {
        log::warn!("using test-only argon2 parameters: the verifier is weak");
        KdfParams::INSECURE_FOR_TESTS
    } else {
        KdfParams::DEFAULT
    }
}

/// The data key's wrap: [`KdfParams::DATA_KEY`], or cheap ones for tests.
fn wrap_kdf(insecure: bool) -> KdfParams {
    if insecure {
        KdfParams::INSECURE_FOR_TESTS
    } else {
        KdfParams::DATA_KEY
    }
}

fn read_password(confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let p = rpassword::prompt_password("Password: ")
            .map_err(|e| Error::Usage(format!("cannot read the password: {e}")))?;
        if confirm {
            let again = rpassword::prompt_password("Again: ")
                .map_err(|e| Error::Usage(format!("cannot read the password: {e}")))?;
            if again != p {
                return Err(Error::Usage(
                    "the passwords differ; nothing changed, try again".into(),
                ));
            }
        }
        Ok(p)
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| {
            Error::Usage(format!("cannot read the password from standard input: {e}"))
        })?;
        let p = line.trim_end_matches(['\n', '\r']).to_owned();
        if p.is_empty() {
            return Err(Error::Usage("no password on standard input: pipe it in, e.g. `echo secret | collective-repo user add NAME`".into()));
        }
        Ok(p)
    }
}

/// Writes a key pair: `PREFIX.key` (mode 0600, create-only) and `PREFIX.pub`. Refuses to
/// replace either: a lost secret key cannot be made again.
fn write_key_pair(
    out: &Path,
    secret_text: &str,
    public_text: &str,
    why_not_replace: &str,
) -> Result<(PathBuf, PathBuf)> {
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::Usage(format!(
                "{} exists already; move it away or pick another --out ({why_not_replace})",
                p.display()
            )));
        }
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(|e| fsutil::io_context("creating", &secret, e))?;
        f.write_all(secret_text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| fsutil::io_context("writing", &secret, e))?;
    }
    std::fs::write(&public, public_text).map_err(|e| fsutil::io_context("writing", &public, e))?;
    Ok((secret, public))
}

fn keygen(out: &Path) -> Result<()> {
    let key = SecretKey::generate();
    let text = format!(
        "# Collective publisher key: build this line into terminal images as a trusted key.\n{}\n",
        key.public()
    );
    let (secret, public) = write_key_pair(
        out,
        &key.to_file_text(),
        &text,
        "a new key is not trusted by existing terminals",
    )?;
    println!(
        "secret key: {} (keep it off the server, back it up)",
        secret.display()
    );
    println!("public key: {} = {}", public.display(), key.public());
    Ok(())
}

fn recovery_keygen(out: &Path) -> Result<()> {
    let key = RecoverySecretKey::generate();
    let text = format!(
        "# Collective organisation recovery key: install it with `collective-repo recovery install`.\n{}\n",
        key.public()
    );
    let (secret, public) = write_key_pair(
        out,
        &key.to_file_text(),
        &text,
        "data keys sealed to the old key need it",
    )?;
    println!(
        "recovery secret key: {} (keep it OFFLINE, never on the repository; it opens every user's data key made after it is installed)",
        secret.display()
    );
    println!(
        "recovery public key: {} = {}",
        public.display(),
        key.public()
    );
    println!(
        "install it with `collective-repo -r DIR recovery install {}`",
        public.display()
    );
    Ok(())
}

fn read_recovery_secret(path: &Path) -> Result<RecoverySecretKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Input {
        what: "recovery secret key (from `collective-repo recovery keygen`)",
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    RecoverySecretKey::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { dir } => {
            Repo::init(&dir)?;
            println!("created an empty repository in {}", dir.display());
        }
        Cmd::Keygen { out } => keygen(&out)?,
        Cmd::Publish {
            dir,
            name,
            kernel,
            initrd,
            cmdline,
            disks,
            memory,
            vcpus,
            networks,
            chunk_size,
            boot_trace,
            display,
            key,
        } => {
            let repo = Repo::open(&dir)?;
            let key_text = std::fs::read_to_string(&key).map_err(|e| Error::Input {
                what: "secret key (make one with `collective-repo keygen`, pass it with --key)",
                path: key.clone(),
                why: e.to_string(),
            })?;
            let key = SecretKey::from_file_text(&key_text)?;
            let disks = disks
                .iter()
                .map(|d| d.parse::<DiskSpec>())
                .collect::<Result<Vec<_>>>()?;
            let networks = networks
                .iter()
                .map(|n| match n.split_once('=') {
                    Some((net, mac)) => NetworkAttachment {
                        network: net.into(),
                        mac: Some(mac.to_lowercase()),
                    },
                    None => NetworkAttachment {
                        network: n.clone(),
                        mac: None,
                    },
                })
                .collect();
            let chunk_size = parse_size(&chunk_size)
                .ok()
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--chunk-size {chunk_size:?} is not a size like 64K"
                    ))
                })?;
            let req = PublishRequest {
                name: name.clone(),
                kernel,
                initrd,
                cmdline,
                disks,
                memory_mib: memory,
                vcpus,
                networks,
                chunk_size,
                boot_trace,
                display,
            };
            let stats = repository::publish::publish(&repo, &req, &key)?;
            println!("published {name} version {}", stats.version);
            println!(
                "new: {} bytes in {} chunks ({} bytes stored); already stored: {} bytes in {} chunks; zero: {} bytes; {:.2} s",
                stats.new_bytes, stats.new_chunks, stats.new_stored_bytes, stats.existing_bytes, stats.existing_chunks, stats.zero_bytes, stats.elapsed.as_secs_f64()
            );
        }
        Cmd::Image(ImageCmd::Create {
            src,
            out,
            size,
            label,
        }) => {
            let size = parse_size(&size)
                .map_err(|_| Error::Usage(format!("--size {size:?} is not a size like 256M")))?;
            repository::image::create(&src, &out, size, &label)?;
            println!("wrote {}", out.display());
        }
        Cmd::Image(ImageCmd::Update { image, add, remove }) => {
            let mut changes = Vec::new();
            for r in remove {
                changes.push(Change::Remove { guest: r });
            }
            for a in add {
                let (host, guest) = a.split_once('=').ok_or_else(|| {
                    Error::Usage(format!(
                        "--add {a:?}: write HOST=GUEST, e.g. ./pkg=/opt/pkg"
                    ))
                })?;
                changes.push(Change::Add {
                    host: host.into(),
                    guest: guest.into(),
                });
            }
            repository::image::update(&image, &changes)?;
            println!("updated {}", image.display());
        }
        Cmd::User(UserCmd::Add {
            name,
            insecure_fast_kdf,
        }) => {
            let repo = Repo::open(&cli.repo)?;
            let password = read_password(true)?;
            users::add(
                &repo,
                &name,
                &password,
                kdf(insecure_fast_kdf),
                wrap_kdf(insecure_fast_kdf),
            )?;
            println!("added user {name}; give them appliances with `collective-repo set assign {name} APPLIANCE...`");
        }
        Cmd::User(UserCmd::Passwd {
            name,
            recovery_key,
            discard_data,
            insecure_fast_kdf,
        }) => {
            let repo = Repo::open(&cli.repo)?;
            let secret = recovery_key
                .as_deref()
                .map(read_recovery_secret)
                .transpose()?;
            let mode = match (&secret, discard_data) {
                (Some(s), _) => users::PasswdMode::Recovery(s),
                (None, true) => users::PasswdMode::DiscardData,
                (None, false) => users::PasswdMode::Plain,
            };
            // Say no before asking for a password that could not be used.
            users::check_passwd(&repo, &name, &mode)?;
            let password = read_password(true)?;
            let outcome = users::passwd(
                &repo,
                &name,
                &password,
                kdf(insecure_fast_kdf),
                wrap_kdf(insecure_fast_kdf),
                mode,
            )?;
            match outcome {
                users::PasswdOutcome::Rewrapped => println!("changed the password of {name}; their data key was re-wrapped with the recovery key, their data stays readable"),
                users::PasswdOutcome::NoKey => println!("changed the password of {name} (no data key yet: their terminal makes one at the next login)"),
                users::PasswdOutcome::Discarded(n) => println!("changed the password of {name} and gave them a NEW data key: {n} user disk(s) sealed with the old key were discarded (their chunks go with the next gc); {name} starts from the appliances' initial content"),
            }
            println!(
                "{name}'s open sessions end now (a terminal logged in as {name} must log in again)"
            );
        }
        Cmd::Recovery(RecoveryCmd::Keygen { out }) => recovery_keygen(&out)?,
        Cmd::Recovery(RecoveryCmd::Install { public_key }) => {
            let repo = Repo::open(&cli.repo)?;
            let text = std::fs::read_to_string(&public_key).map_err(|e| Error::Input {
                what: "recovery public key (from `collective-repo recovery keygen`)",
                path: public_key.clone(),
                why: e.to_string(),
            })?;
            let key = RecoveryPublicKey::parse(&text)
                .map_err(|e| Error::Usage(format!("{}: {e}", public_key.display())))?;
            repo.set_recovery_key(&key)?;
            println!("installed recovery key {key}: data keys made from now on are sealed to it too (existing users keep the wrap they have)");
        }
        Cmd::Upgrade { dir } => {
            let (_, keyless, unsealed) = Repo::upgrade(&dir)?;
            println!(
                "{} is at layout format {}",
                dir.display(),
                repository::store::REPOSITORY_FORMAT
            );
            if keyless.is_empty() && unsealed.is_empty() {
                println!("every user has a data key and every user disk is sealed");
            } else {
                println!(
                    "users without a data key (their terminal makes one at the next login): {}",
                    if keyless.is_empty() {
                        "none".to_owned()
                    } else {
                        keyless.join(", ")
                    }
                );
                println!("user disks still in the clear (sealed at the owner's next logout; then `collective-repo gc` removes the plaintext chunks): {}", if unsealed.is_empty() { "none".to_owned() } else { unsealed.join(", ") });
            }
        }
        Cmd::User(UserCmd::Remove { name }) => {
            let repo = Repo::open(&cli.repo)?;
            users::remove(&repo, &name)?;
            println!(
                "removed user {name} (their user disks are kept); {name}'s open sessions end now"
            );
        }
        Cmd::Set(SetCmd::Assign { user, appliances }) => {
            let repo = Repo::open(&cli.repo)?;
            users::assign(&repo, &user, &appliances)?;
            println!("{user}'s appliance set: [{}]", appliances.join(", "));
        }
        Cmd::List => {
            let repo = Repo::open(&cli.repo)?;
            print!("{}", users::list(&repo)?);
        }
        Cmd::Gc {
            grace,
            keep_versions,
            dry_run,
        } => {
            let repo = Repo::open(&cli.repo)?;
            let stats = repository::gc::gc(
                &repo,
                &GcOptions {
                    grace: Duration::from_secs(grace),
                    keep_versions,
                    dry_run,
                },
            )?;
            println!("{}{stats}", if dry_run { "dry run: " } else { "" });
        }
        Cmd::Verify { trusted, chunks } => {
            let repo = Repo::open(&cli.repo)?;
            let mut keys = Vec::new();
            for t in &trusted {
                let text = std::fs::read_to_string(t).map_err(|e| Error::Input {
                    what: "trusted key file",
                    path: t.clone(),
                    why: e.to_string(),
                })?;
                keys.push(appliance::PublicKey::from_file_text(&text)?);
            }
            let report = repository::verify::verify(&repo, &keys, chunks)?;
            for p in &report.problems {
                println!("PROBLEM: {p}");
            }
            println!(
                "checked {} manifests{} and {} chunks: {} problem(s)",
                report.manifests,
                if keys.is_empty() {
                    " (signatures not checked: pass --trusted KEY.pub)"
                } else {
                    ""
                },
                report.chunks,
                report.problems.len()
            );
            if !report.problems.is_empty() {
                return Err(Error::Usage(
                    "the repository has problems (listed above)".into(),
                ));
            }
        }
        Cmd::Serve {
            dir,
            listen,
            tls_cert,
            tls_key,
            access_log,
            threads,
            max_connections,
            max_connections_per_client,
            max_bodies_per_client,
            io_timeout,
            trusted_proxies,
            user_quota,
            insecure_fast_kdf,
        } => {
            let repo = Repo::open(&dir)?;
            let mut config = ServeConfig::new(&repo, &listen);
            config.tls = tls_cert.zip(tls_key);
            if access_log.is_some() {
                config.access_log = access_log;
            }
            config.threads = threads;
            config.limits.max_connections = max_connections;
            config.limits.max_connections_per_client = max_connections_per_client;
            config.limits.max_bodies_per_client = max_bodies_per_client;
            config.limits.trusted_proxies = trusted_proxies;
            config.limits.io_timeout = std::time::Duration::from_secs(io_timeout.max(1));
            config.limits.user_quota = user_quota
                .map(|q| parse_size(&q).map_err(|e| Error::Usage(format!("--user-quota {q}: {e}"))))
                .transpose()?;
            config.dummy_kdf = kdf(insecure_fast_kdf);
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let server = repository::server::start(repo, &config)?;
            // Tests and scripts read this line to learn the port.
            println!("listening on {scheme}://{}", server.addr());
            let _ = std::io::stdout().flush();
            server.wait();
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
