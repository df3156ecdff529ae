//! Payment input, parsed into types that cannot hold an invalid value.
//!
//! Parsing collects every problem at once, so a client fixes its request in one round trip
//! instead of one field at a time.

use std::collections::BTreeMap;

use platform::problem::FieldError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The largest amount accepted, in minor units: 10 billion (100 million in a currency with
/// two decimals). Anything larger is a client bug, not a payment.
pub const MAX_AMOUNT: i64 = 10_000_000_000;
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Active ISO 4217 currency codes that can be paid in (no funds, metals or test codes).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN",
    "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP",
    "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY",
    "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD",
    "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK",
    "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG",
    "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS",
    "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// The body of `POST /v1/payments`, as the client sent it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Amount in the currency's minor unit (cents for EUR), from 1 to 10000000000.
    #[schema(example = 1250, minimum = 1, maximum = 10_000_000_000i64)]
    pub amount: i64,
    /// ISO 4217 code, any case (`eur` or `EUR`).
    #[schema(example = "EUR")]
    pub currency: String,
    /// Free text for the merchant's own use, at most 1000 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Up to 50 string pairs; keys at most 40 characters, values at most 500.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A payment request that passed every rule.
///
/// Its canonical JSON (sorted metadata, normalised currency) is what the idempotency
/// record hashes, so the same request written with different spacing or key order is
/// recognised as the same request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NewPayment {
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl NewPayment {
    pub fn parse(request: CreatePaymentRequest) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut invalid = |pointer: &str, detail: String| {
            errors.push(FieldError {
                pointer: pointer.to_owned(),
                detail,
            })
        };

        if request.amount <= 0 {
            invalid(
                "/amount",
                "must be a positive integer in minor units".into(),
            );
        } else if request.amount > MAX_AMOUNT {
            invalid(
                "/amount",
                format!("must be at most {MAX_AMOUNT} minor units"),
            );
        }

        let currency = request.currency.trim().to_ascii_uppercase();
        if !ISO_4217.contains(&currency.as_str()) {
            invalid(
                "/currency",
                format!(
                    "{:?} is not an ISO 4217 currency code (for example EUR, USD, JPY)",
                    request.currency
                ),
            );
        }

        if let Some(description) = &request.description
            && description.chars().count() > MAX_DESCRIPTION_CHARS
        {
            invalid(
                "/description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            );
        }

        let metadata = request.metadata.unwrap_or_default();
        if metadata.len() > MAX_METADATA_KEYS {
            invalid(
                "/metadata",
                format!("may hold at most {MAX_METADATA_KEYS} keys"),
            );
        }
        for (key, value) in &metadata {
            let pointer = format!("/metadata/{}", key.replace('~', "~0").replace('/', "~1"));
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > MAX_METADATA_KEY_CHARS {
                invalid(
                    &pointer,
                    format!("keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"),
                );
            }
            if value.chars().count() > MAX_METADATA_VALUE_CHARS {
                invalid(
                    &pointer,
                    format!("values must be at most {MAX_METADATA_VALUE_CHARS} characters"),
                );
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            amount: request.amount,
            currency,
            description: request.description,
            metadata,
        })
    }

    /// SHA-256 of the canonical form; equal for requests that mean the same thing.
    pub fn fingerprint(&self) -> Vec<u8> {
        let canonical = serde_json::to_vec(self).expect("a NewPayment always serialises");
        Sha256::digest(canonical).to_vec()
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: Option<&str>) -> Result<Self, FieldError> {
        let error = |detail: &str| FieldError {
            pointer: "Idempotency-Key".into(),
            detail: detail.into(),
        };
        let raw = raw.ok_or_else(|| {
            error("the Idempotency-Key header is required: send a unique value (a UUID works) per payment, and the same value when retrying it")
        })?;
        if raw.is_empty() || raw.len() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(error(
                "the Idempotency-Key header must be 1 to 255 characters",
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(error(
                "the Idempotency-Key header must be visible ASCII characters without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount: i64, currency: &str) -> CreatePaymentRequest {
        CreatePaymentRequest {
            amount,
            currency: currency.into(),
            description: None,
            metadata: None,
        }
    }

    #[test]
    fn lower_case_currency_is_normalised() {
        let payment = NewPayment::parse(request(100, "eur")).unwrap();
        assert_eq!(payment.currency, "EUR");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let errors = NewPayment::parse(request(-5, "EURO")).unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/amount", "/currency"]);
    }

    #[test]
    fn absurd_amount_and_unknown_currency_are_rejected() {
        assert!(NewPayment::parse(request(MAX_AMOUNT + 1, "USD")).is_err());
        assert!(NewPayment::parse(request(MAX_AMOUNT, "USD")).is_ok());
        assert!(NewPayment::parse(request(100, "XXX")).is_err());
    }

    #[test]
    fn metadata_pointer_escapes_slashes() {
        let mut req = request(100, "USD");
        req.metadata = Some(BTreeMap::from([("a/b".repeat(20), "v".into())]));
        let errors = NewPayment::parse(req).unwrap_err();
        assert!(errors[0].pointer.starts_with("/metadata/a~1b"));
    }

    #[test]
    fn same_request_in_another_spelling_has_the_same_fingerprint() {
        let a = NewPayment::parse(request(100, "usd")).unwrap();
        let b = NewPayment::parse(request(100, " USD")).unwrap();
        let c = NewPayment::parse(request(101, "USD")).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn idempotency_key_must_be_present_and_visible_ascii() {
        assert!(IdempotencyKey::parse(None).is_err());
        assert!(IdempotencyKey::parse(Some("")).is_err());
        assert!(IdempotencyKey::parse(Some("has space")).is_err());
        assert!(IdempotencyKey::parse(Some(&"k".repeat(256))).is_err());
        assert_eq!(
            IdempotencyKey::parse(Some("order-42")).unwrap().as_str(),
            "order-42"
        );
    }
}
