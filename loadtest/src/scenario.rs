//! The workload: which requests a virtual client sends, as whom.

use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    CreatePayment,
    GetPayment,
    ListPayments,
    /// `GET /v1/analytics/payments`, served from ClickHouse.
    PaymentAnalytics,
}

/// Relative weights of the operations, e.g. `create=1,get=3,list=1`.
#[derive(Debug, Clone, Serialize)]
pub struct Mix {
    weights: Vec<(Operation, u32)>,
    total: u32,
}

impl std::str::FromStr for Mix {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<Self> {
        let mut weights = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let operation = match name {
                "create" => Operation::CreatePayment,
                "get" => Operation::GetPayment,
                "list" => Operation::ListPayments,
                "analytics" => Operation::PaymentAnalytics,
                other => bail!("unknown operation {other:?} (use create, get, list, analytics)"),
            };
            let weight: u32 = weight
                .parse()
                .with_context(|| format!("weight of {name} must be a whole number"))?;
            if weight > 0 {
                weights.push((operation, weight));
            }
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            bail!("the mix needs at least one operation with a positive weight");
        }
        Ok(Self { weights, total })
    }
}

impl Mix {
    /// The mix as it would be written on the command line.
    pub fn describe(&self) -> String {
        self.weights
            .iter()
            .map(|(operation, weight)| {
                let name = match operation {
                    Operation::CreatePayment => "create",
                    Operation::GetPayment => "get",
                    Operation::ListPayments => "list",
                    Operation::PaymentAnalytics => "analytics",
                };
                format!("{name}={weight}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Operation {
        let mut roll = rng.random_range(0..self.total);
        for (operation, weight) in &self.weights {
            if roll < *weight {
                return *operation;
            }
            roll -= weight;
        }
        self.weights[0].0
    }
}

/// Creates `count` accounts directly on the primary and returns their API keys. They are on
/// the `loadtest` plan, which the tier gives a rate limit high enough that a load test
/// measures the service's capacity, not the limiter.
pub async fn seed_accounts(primary_url: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut connection = PgConnection::connect(primary_url)
        .await
        .context("cannot connect to the primary to seed accounts")?;
    let mut keys = Vec::with_capacity(count);
    let mut transaction = connection.begin().await?;
    for i in 0..count {
        let (_, key) =
            api::auth::create_account(&mut transaction, &format!("loadtest-{i}"), "loadtest")
                .await?;
        keys.push(key);
    }
    transaction.commit().await?;
    Ok(keys)
}

/// Waits until the target accepts the last seeded key: authentication reads from replicas,
/// which trail the primary by a few milliseconds.
pub async fn wait_until_usable(target: &str, key: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let response = client
            .get(format!("{target}/v1/payments?limit=1"))
            .bearer_auth(key)
            .send()
            .await;
        if matches!(&response, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the target did not accept the seeded accounts within 15 s: {response:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_follows_its_weights() {
        let mix: Mix = "create=1,get=3".parse().unwrap();
        let mut rng = rand::rng();
        let gets = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Operation::GetPayment)
            .count();
        assert!((7_000..8_000).contains(&gets), "{gets}");
    }

    #[test]
    fn bad_mixes_are_refused() {
        assert!("buy=1".parse::<Mix>().is_err());
        assert!("create=0".parse::<Mix>().is_err());
        assert!("create=x".parse::<Mix>().is_err());
    }
}
