//! Command line: parses arguments and calls into the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tchap_visio::app::{self, RunOptions};
use tchap_visio::config::Config;
use tchap_visio::matrix::registration;
use tchap_visio::observability;

/// Video meetings for Matrix rooms, as one application service.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Store transactions without processing them (maintenance and crash tests).
        #[arg(long, hide = true)]
        hold_inbox: bool,
    },
    /// Write random tokens into the config and a registration file for the homeserver.
    GenerateRegistration {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Where the registration is written: under data/ (ignored by git) by default,
        /// so that real tokens never land in the tracked example at the root.
        #[arg(short, long, default_value = "data/registration.yaml")]
        registration: PathBuf,
        /// Replace tokens that already exist.
        #[arg(long)]
        force: bool,
        /// Print nothing on success (for scripts that install the file themselves).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Validate the config, then check that the homeserver and the service reach each other.
    CheckConfig {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The registration the homeserver loads, checked for the keys this
        /// configuration needs (skipped when the file does not exist).
        #[arg(short, long, default_value = "data/registration.yaml")]
        registration: PathBuf,
    },
    /// Apply database migrations.
    Migrate {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Manage meetings (for admins, and for tests before the bot makes them).
    Meeting {
        #[command(subcommand)]
        command: MeetingCommand,
    },
    /// Manage the bot API's tokens.
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Check webhook receivers.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Manage the nodes of a cluster.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Stop placing new meetings on a node, for a rolling upgrade: its meetings run until
    /// they end, and it hands the leadership over at its next heartbeat. Its next start
    /// ends the drain.
    Drain {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The node to drain; by default this config's cluster.node_id.
        #[arg(long)]
        node: Option<String>,
    },
    /// End a node's drain without restarting it: new meetings may be placed there again.
    Undrain {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// The node; by default this config's cluster.node_id.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create a token and print it (once: only its SHA-256 is stored). Give it a scope:
    /// --room (repeatable), --server (repeatable) or --all-rooms.
    Create {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// What the token is for, e.g. compte-rendu-bot (A-Z, a-z, 0-9, `.`, `_`, `-`).
        #[arg(long)]
        name: String,
        /// A room whose meetings the token reaches, e.g. '!abc:example.org' (repeatable).
        #[arg(long = "room", value_name = "ROOM_ID")]
        rooms: Vec<String>,
        /// A server whose rooms the token reaches: those whose id ends with `:<server>`
        /// (repeatable).
        #[arg(long = "server", value_name = "SERVER_NAME")]
        servers: Vec<String>,
        /// The token reaches every room's meetings, and meetings without a room.
        #[arg(long)]
        all_rooms: bool,
        /// The token reads (meetings, attendance, chat) but cannot post.
        #[arg(long)]
        read_only: bool,
    },
    /// List tokens: name, creation, last use, revocation, id, scope, read-only or not.
    List {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Revoke a token; it stops working at once.
    Revoke {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Queue a signed `ping` event for every receiver; the running service sends it.
    Test {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
}

/// The config for commands that only touch the database: the appservice tokens play
/// no part, so the config need not be registered yet.
fn load_for_admin(config: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(config)?;
    config.validate_except_tokens()?;
    Ok(config)
}

/// A time of the database (ms since the epoch) for people: UTC, to the second.
fn format_ms(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[derive(Subcommand)]
enum MeetingCommand {
    /// Create a meeting and print its join link and id.
    Create {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Title shown on the meeting page.
        #[arg(long)]
        title: String,
        /// Matrix room the meeting belongs to (`!id:server`).
        #[arg(long)]
        room: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tchap_visio::matrix::client::install_tls_provider();
    let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, hold_inbox } => {
            let config = Config::load_valid(&config)?;
            observability::init_logging(&config.logging);
            app::run(config, RunOptions { hold_inbox }).await
        }
        Command::GenerateRegistration {
            config,
            registration: registration_path,
            force,
            quiet,
        } => {
            let reg = registration::generate(&config, &registration_path, force)?;
            if quiet {
                return Ok(());
            }
            println!(
                "Wrote new tokens to {} and {}.\nAdd {} to the homeserver's app_service_config_files, \
                 restart it, then run: tchap-visio check-config -c {}\nBot localpart: {} — ghost users: {}",
                config.display(),
                registration_path.display(),
                registration_path.display(),
                config.display(),
                reg.sender_localpart,
                reg.namespaces.users[0].regex,
            );
            Ok(())
        }
        Command::CheckConfig {
            config,
            registration,
        } => {
            let config = Config::load_valid(&config)?;
            println!("{}", app::check_config(&config, &registration).await?);
            Ok(())
        }
        Command::Migrate { config } => {
            let config = Config::load_valid(&config)?;
            let applied = app::migrate(&config).await?;
            println!("{applied} migration(s) applied");
            Ok(())
        }
        Command::Meeting {
            command:
                MeetingCommand::Create {
                    config,
                    title,
                    room,
                },
        } => {
            // The appservice tokens play no part here: the config need not be registered yet.
            let config = Config::load(&config)?;
            config.validate_except_tokens()?;
            let created = app::create_meeting(&config, &title, room.as_deref()).await?;
            println!(
                "Meeting created: {}\nlink: {}\nid: {}",
                created.title, created.link, created.id
            );
            Ok(())
        }
        Command::ApiToken { command } => match command {
            ApiTokenCommand::Create {
                config,
                name,
                rooms,
                servers,
                all_rooms,
                read_only,
            } => {
                let new = app::NewApiToken {
                    name: name.clone(),
                    rooms,
                    servers,
                    all_rooms,
                    read_only,
                };
                let token = app::create_api_token(&load_for_admin(&config)?, &new).await?;
                println!(
                    "API token `{name}` created. It is shown only now: give it to the bot \
                     (Authorization: Bearer <token>).\n{token}"
                );
                Ok(())
            }
            ApiTokenCommand::List { config } => {
                let tokens = app::list_api_tokens(&load_for_admin(&config)?).await?;
                if tokens.is_empty() {
                    println!(
                        "No API token (create one with: tchap-visio api-token create --name NAME --room ROOM_ID)"
                    );
                }
                for token in tokens {
                    let scope = tchap_visio::auth::api_token::TokenScope::from_stored(&token.scope)
                        .map(|s| s.describe())
                        .unwrap_or_else(|| "no room (unreadable scope)".into());
                    println!(
                        "{}\tcreated {}\tlast used {}\t{}\tid {}\t{}\t{}",
                        token.name,
                        format_ms(Some(token.created_at)),
                        format_ms(token.last_used_at),
                        match token.revoked_at {
                            Some(_) => format!("revoked {}", format_ms(token.revoked_at)),
                            None => "active".into(),
                        },
                        token.id,
                        scope,
                        if token.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                    );
                }
                Ok(())
            }
            ApiTokenCommand::Revoke { config, name } => {
                app::revoke_api_token(&load_for_admin(&config)?, &name).await?;
                println!("API token `{name}` revoked.");
                Ok(())
            }
        },
        Command::Webhook {
            command: WebhookCommand::Test { config },
        } => {
            let (event, receivers) = app::webhook_test(&load_for_admin(&config)?).await?;
            println!(
                "Queued ping event {event} for {} receiver(s): {}\nThe running service sends it \
                 within a second; its log says how each delivery went.",
                receivers.len(),
                receivers.join(", ")
            );
            Ok(())
        }
        Command::Node {
            command: NodeCommand::Drain { config, node },
        } => {
            let (node, rooms) =
                app::set_node_draining(&load_for_admin(&config)?, node.as_deref(), true).await?;
            println!(
                "Node {node} drains: new meetings go to other nodes, and it hands the leadership \
                 over within a heartbeat. {rooms} meeting(s) still run on it until they end.\n\
                 Stop it when none is left (check-config lists the nodes), or send it SIGTERM, \
                 which waits for them up to cluster.drain_timeout_secs."
            );
            Ok(())
        }
        Command::Node {
            command: NodeCommand::Undrain { config, node },
        } => {
            let (node, _) =
                app::set_node_draining(&load_for_admin(&config)?, node.as_deref(), false).await?;
            println!("Node {node} takes new meetings again.");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_printed_in_utc() {
        assert_eq!(super::format_ms(Some(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            super::format_ms(Some(1_764_000_000_123)),
            "2025-11-24 16:00:00Z"
        );
        assert_eq!(
            super::format_ms(Some(951_825_600_000)),
            "2000-02-29 12:00:00Z"
        );
        assert_eq!(super::format_ms(None), "-");
    }
}
