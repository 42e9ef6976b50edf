//! `projector dlq ...`: its arguments and what each runs.

use crate::Subscription;
use crate::dlq::{self, Action, Selection, Skip};
use anyhow::Context;
use clap::{Args, Subcommand};
use domain::DeliveryId;
use sqlx::PgPool;
use std::process::ExitCode;

#[derive(Args)]
pub struct DlqArgs {
    /// The event topic the stuck messages came from.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "delivery.events")]
    topic: String,
    /// The live projector's consumer group (its partition locks are taken while acting).
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "delivery-projector")]
    group: String,
    #[command(subcommand)]
    command: DlqCmd,
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// What is stuck: each poison message and each parked event, its delivery and version,
    /// where it was read (partition:offset), since when, and why.
    List {
        /// Only this delivery's.
        #[arg(long, value_parser = DeliveryId::parse)]
        delivery: Option<DeliveryId>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply stuck events again, each delivery in version order, with this build (after a fix,
    /// say once a new event schema is understood). Those that still fail stay stuck with the
    /// new error. Exits with 1 when anything is still stuck.
    Retry(RetryArgs),
    /// Declare the version a delivery waits for skipped (its poison record, if any, is removed
    /// and kept in the audit record); the delivery moves on and its parked events are applied.
    /// Or skip one poison message by where it was read (`--message 3:1207`).
    Skip(SkipArgs),
}

/// Who acts, and why: both recorded with the action.
#[derive(Args)]
pub struct Who {
    /// Who is acting (recorded).
    #[arg(long, visible_alias = "by", env = "USER")]
    actor: String,
    /// Why (recorded; required).
    #[arg(long)]
    reason: String,
}

impl Who {
    fn action(self) -> Action {
        Action {
            actor: self.actor,
            reason: self.reason,
        }
    }
}

#[derive(Args)]
pub struct RetryArgs {
    /// The deliveries whose stuck events to apply again.
    #[arg(value_parser = DeliveryId::parse, required_unless_present_any = ["all", "message"])]
    deliveries: Vec<DeliveryId>,
    /// Every stuck delivery and every poison message.
    #[arg(long, conflicts_with_all = ["deliveries", "message"])]
    all: bool,
    /// One poison message, as PARTITION:OFFSET.
    #[arg(long, value_parser = dlq::parse_position, conflicts_with = "deliveries")]
    message: Option<(i32, i64)>,
    #[command(flatten)]
    who: Who,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SkipArgs {
    /// The delivery to move past the version it waits for.
    #[arg(value_parser = DeliveryId::parse, required_unless_present = "message",
          conflicts_with = "message")]
    delivery: Option<DeliveryId>,
    /// One poison message, as PARTITION:OFFSET.
    #[arg(long, value_parser = dlq::parse_position)]
    message: Option<(i32, i64)>,
    #[command(flatten)]
    who: Who,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(pool: &PgPool, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let subscription = Subscription {
        group: args.group,
        topic: args.topic,
    };
    match args.command {
        DlqCmd::List { delivery, json } => {
            let stuck = dlq::list(pool, &subscription.topic, delivery.map(|d| d.as_uuid()))
                .await
                .context("listing stuck events")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stuck)?);
            } else {
                print!("{}", dlq::table(&stuck));
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Retry(args) => {
            let selection = match (args.all, args.message) {
                (true, _) => Selection::All,
                (false, Some((partition, offset))) => Selection::Message { partition, offset },
                (false, None) => {
                    Selection::Deliveries(args.deliveries.iter().map(|d| d.as_uuid()).collect())
                }
            };
            let outcomes = dlq::retry(pool, &subscription, &selection, &args.who.action())
                .await
                .context("retrying stuck events")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&outcomes)?);
            } else if outcomes.is_empty() {
                println!("nothing is stuck");
            }
            for outcome in outcomes.iter().filter(|_| !args.json) {
                println!("{outcome}");
            }
            let cleared = outcomes
                .iter()
                .all(|o| o.still_parked == 0 && o.still_poison == 0);
            Ok(if cleared {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DlqCmd::Skip(args) => {
            let what = match (args.delivery, args.message) {
                (Some(delivery), _) => Skip::Delivery(delivery.as_uuid()),
                (None, Some((partition, offset))) => Skip::Message { partition, offset },
                (None, None) => anyhow::bail!("name a delivery or --message PARTITION:OFFSET"),
            };
            let outcome = dlq::skip(pool, &subscription, what, &args.who.action())
                .await
                .context("skipping")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("{outcome}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
