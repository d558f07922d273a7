//! `parley user ...`: account administration on the same database the daemon uses.

use std::io::BufRead;

use anyhow::{Context, bail};
use base64::Engine;
use parley_config::Config;
use parley_store::Store;
use rand::RngCore;

use crate::cli::UserCommand;

pub async fn run(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    crate::serve::prepare_data_dir(&config.storage.data_dir)?;
    let store = Store::open(&config.storage.database_path()).await?;
    let result = execute(&store, command).await;
    store.close().await;
    result
}

async fn execute(store: &Store, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            username,
            display_name,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            let user = store
                .create_user(&username, display_name.as_deref(), &password)
                .await?;
            println!("created user {} (id {})", user.username, user.id);
            if generated {
                println!("password: {password}");
                println!(
                    "(shown once; change it with `parley user passwd {}`)",
                    user.username
                );
            }
        }
        UserCommand::List => {
            let users = store.list_users().await?;
            println!(
                "{:<6} {:<32} {:<9} DISPLAY NAME",
                "ID", "USERNAME", "STATUS"
            );
            for user in users {
                let status = if user.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<6} {:<32} {:<9} {}",
                    user.id, user.username, status, user.display_name
                );
            }
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            let user = store.set_password(&username, &password).await?;
            println!(
                "password changed for {}; their sessions have ended",
                user.username
            );
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Disable { username, enable } => {
            let user = store.set_disabled(&username, !enable).await?;
            if enable {
                println!("enabled {}", user.username);
            } else {
                println!("disabled {}; their sessions have ended", user.username);
            }
        }
        UserCommand::Remove { username } => {
            let user = store.remove_user(&username).await?;
            println!(
                "removed {}; their calls stay in other people's history",
                user.username
            );
        }
    }
    Ok(())
}

/// The password from stdin, or a generated one (and whether it was generated).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok((password, false));
    }
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    Ok((
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        true,
    ))
}
