pub mod health;
pub mod payments;
