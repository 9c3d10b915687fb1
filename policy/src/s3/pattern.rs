//! The objects an `s3` rule names: `*`, `bucket`, `bucket/*`, `bucket/prefix*` or
//! `bucket/exact/key`. Keys are compared exactly (S3 keys are case-sensitive and literal).

use super::{Resource, is_bucket_name};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectGlob {
    /// Every bucket, object and listing, and the account itself (ListBuckets).
    Any,
    /// The bucket itself (HeadBucket, GetBucketLocation), none of its objects.
    Bucket(String),
    /// The keys that start with `prefix` and the listings inside it (`bucket/*`: the whole
    /// bucket, itself included).
    Prefix { bucket: String, prefix: String },
    /// One key.
    Exact { bucket: String, key: String },
}

impl ObjectGlob {
    /// Parses a pattern; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let (bucket, key) = match text.split_once('/') {
            Some((bucket, key)) => (bucket, Some(key)),
            None => (text, None),
        };
        if !is_bucket_name(bucket) {
            return Err(format!(
                "`{text}` must be `*`, `bucket`, `bucket/*`, `bucket/prefix*` or `bucket/key`, \
                 with a bucket name of letters, digits, `.`, `-`, `_`"
            ));
        }
        let bucket = bucket.to_owned();
        let Some(key) = key else {
            return Ok(Self::Bucket(bucket));
        };
        let (stem, star) = match key.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (key, false),
        };
        if stem.contains('*') {
            return Err(format!(
                "`{text}`: `*` may only end a pattern (`bucket/prefix*`), keys have no wildcards \
                 inside"
            ));
        }
        if !star && stem.is_empty() {
            return Err(format!(
                "`{text}` names no key: `bucket` for the bucket, `bucket/*` for all of it"
            ));
        }
        Ok(if star {
            Self::Prefix {
                bucket,
                prefix: stem.to_owned(),
            }
        } else {
            Self::Exact {
                bucket,
                key: stem.to_owned(),
            }
        })
    }

    /// Whether a grant of this pattern covers all of `resource`: a listing only if its prefix
    /// lies inside the pattern.
    pub fn grants(&self, resource: &Resource) -> bool {
        match (self, resource) {
            (Self::Any, _) => true,
            (_, Resource::Service) => false,
            (Self::Bucket(b), Resource::Bucket(bucket)) => b == bucket,
            (Self::Prefix { bucket: b, prefix }, Resource::Bucket(bucket)) => {
                b == bucket && prefix.is_empty()
            }
            (Self::Prefix { bucket: b, prefix }, Resource::Object { bucket, key }) => {
                b == bucket && key.starts_with(prefix.as_str())
            }
            (
                Self::Prefix { bucket: b, prefix },
                Resource::Prefix {
                    bucket,
                    prefix: listed,
                },
            ) => b == bucket && listed.starts_with(prefix.as_str()),
            (Self::Exact { bucket: b, key: k }, Resource::Object { bucket, key }) => {
                b == bucket && k == key
            }
            _ => false,
        }
    }

    /// Whether a restriction (deny, approve) of this pattern reaches into `resource`: any
    /// overlap counts (a listing that would show one restricted key, a bucket-wide operation
    /// on a bucket with restricted objects, the account's list of buckets).
    pub fn restricts(&self, resource: &Resource) -> bool {
        let bucket_of = |pattern: &Self| match pattern {
            Self::Any => None,
            Self::Bucket(b) | Self::Prefix { bucket: b, .. } | Self::Exact { bucket: b, .. } => {
                Some(b.clone())
            }
        };
        match (self, resource) {
            (Self::Any, _) | (_, Resource::Service) => true,
            (pattern, Resource::Bucket(bucket)) => bucket_of(pattern).as_ref() == Some(bucket),
            (
                Self::Prefix { bucket: b, prefix },
                Resource::Prefix {
                    bucket,
                    prefix: listed,
                },
            ) => {
                b == bucket
                    && (listed.starts_with(prefix.as_str()) || prefix.starts_with(listed.as_str()))
            }
            (Self::Exact { bucket: b, key }, Resource::Prefix { bucket, prefix }) => {
                b == bucket && key.starts_with(prefix.as_str())
            }
            (pattern, resource) => pattern.grants(resource),
        }
    }
}
