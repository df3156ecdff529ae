//! `api`: serve the payments API, migrate its schema, or create an account.

use anyhow::Context;
use api::config::ApiConfig;
use api::startup::Application;
use clap::{Parser, Subcommand};
use platform::shutdown::Shutdown;
use sqlx::Connection;

#[derive(Parser)]
#[command(version, about = "The Tierstack payments API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP. Settings come from the environment (see the README).
    Serve,
    /// Apply pending schema migrations, then exit. Needs a direct connection to the
    /// primary (migrations take session-level locks that a transaction pooler breaks).
    Migrate {
        /// Defaults to DB_PRIMARY_URL.
        #[arg(long, env = "DB_PRIMARY_URL")]
        database_url: String,
    },
    /// Manage accounts (tenants).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Create an account and print its id and API key as one JSON line. The key is shown
    /// only this once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "standard")]
        plan: String,
        #[arg(long, env = "DB_PRIMARY_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = platform::telemetry::init("api");
    match Cli::parse().command {
        Command::Serve => {
            let config = ApiConfig::from_env()?;
            let shutdown = Shutdown::new();
            shutdown.stop_on_signal(config.shutdown_drain);
            let outcome = Application::build(config, shutdown)
                .await?
                .run_until_stopped()
                .await;
            telemetry.shutdown();
            outcome
        }
        Command::Migrate { database_url } => {
            let mut connection = sqlx::PgConnection::connect(&database_url)
                .await
                .context("cannot connect to the primary")?;
            api::MIGRATOR.run(&mut connection).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Accounts {
            command:
                AccountsCommand::Create {
                    name,
                    plan,
                    database_url,
                },
        } => {
            let mut connection = sqlx::PgConnection::connect(&database_url)
                .await
                .context("cannot connect to the primary")?;
            let (account_id, api_key) =
                api::auth::create_account(&mut connection, &name, &plan).await?;
            println!(
                "{}",
                serde_json::json!({ "account_id": account_id, "api_key": api_key })
            );
            Ok(())
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api::app::openapi_json())?
            );
            Ok(())
        }
    }
}
