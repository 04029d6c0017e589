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
        #[arg(short, long, default_value = "registration.yaml")]
        registration: PathBuf,
        /// Replace tokens that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config, then check that the homeserver and the service reach each other.
    CheckConfig {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
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
        } => {
            let reg = registration::generate(&config, &registration_path, force)?;
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
        Command::CheckConfig { config } => {
            let config = Config::load_valid(&config)?;
            println!("{}", app::check_config(&config).await?);
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
    }
}
