//! Any collector flowtrack exports to, by its URL's scheme: IPFIX
//! ([`ExportUrl`], [`Exporter`]) or, with the feature `otlp`,
//! OpenTelemetry ([`OtlpUrl`], [`OtlpExporter`]); both offer, count what
//! they drop and finish alike.

use std::fmt;
use std::io;

use flow_core::FlowEvent;

#[cfg(feature = "otlp")]
use super::otlp::{OtlpExporter, OtlpUrl};
use super::{ExportUrl, ExportUrlError, Exporter};

/// A collector to export to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// An IPFIX collector.
    Ipfix(ExportUrl),
    /// An OpenTelemetry collector (OTLP/gRPC).
    #[cfg(feature = "otlp")]
    Otlp(OtlpUrl),
}

impl Destination {
    /// Parses `url` by its scheme: `otlp…` as an [`OtlpUrl`], `ipfix…` as
    /// an [`ExportUrl`].
    ///
    /// ```
    /// use flow_supervisor::export::destination::Destination;
    /// assert!(Destination::parse("ipfix+udp://127.0.0.1:4739").is_ok());
    /// assert!(Destination::parse("kafka://127.0.0.1:9092").is_err());
    /// ```
    ///
    /// # Errors
    /// An unknown scheme, or what the scheme's own parser refuses.
    pub fn parse(url: &str) -> Result<Self, ExportUrlError> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        if scheme.starts_with("otlp") {
            #[cfg(feature = "otlp")]
            return OtlpUrl::parse(url).map(Self::Otlp);
            #[cfg(not(feature = "otlp"))]
            return Err(ExportUrlError {
                url: url.to_owned(),
                why: "this build has no OpenTelemetry export (feature otlp)".to_owned(),
            });
        }
        if !scheme.starts_with("ipfix") {
            let otlp = if cfg!(feature = "otlp") {
                " or otlp+grpc://HOST:PORT"
            } else {
                ""
            };
            return Err(ExportUrlError {
                url: url.to_owned(),
                why: format!(
                    "unknown scheme (expected ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT{otlp})"
                ),
            });
        }
        ExportUrl::parse(url).map(Self::Ipfix)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipfix(url) => url.fmt(f),
            #[cfg(feature = "otlp")]
            Self::Otlp(url) => url.fmt(f),
        }
    }
}

/// A running export to a [`Destination`].
#[derive(Debug)]
pub enum AnyExporter {
    /// To an IPFIX collector.
    Ipfix(Exporter),
    /// To an OpenTelemetry collector.
    #[cfg(feature = "otlp")]
    Otlp(OtlpExporter),
}

impl AnyExporter {
    /// Starts exporting to `destination`.
    ///
    /// # Errors
    /// When the exporter cannot be made (a socket, a thread).
    pub fn start(destination: Destination) -> io::Result<Self> {
        match destination {
            Destination::Ipfix(url) => Exporter::start(url).map(Self::Ipfix),
            #[cfg(feature = "otlp")]
            Destination::Otlp(url) => OtlpExporter::start(url).map(Self::Otlp),
        }
    }

    /// The collector's URL.
    #[must_use]
    pub fn url(&self) -> String {
        match self {
            Self::Ipfix(exporter) => exporter.url().to_string(),
            #[cfg(feature = "otlp")]
            Self::Otlp(exporter) => exporter.url().to_string(),
        }
    }

    /// Hands `event` to the exporter (which takes the kinds it exports);
    /// never waits.
    pub fn offer(&self, event: &FlowEvent) {
        match self {
            Self::Ipfix(exporter) => exporter.offer(event),
            #[cfg(feature = "otlp")]
            Self::Otlp(exporter) => exporter.offer(event),
        }
    }

    /// Records dropped so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        match self {
            Self::Ipfix(exporter) => exporter.dropped(),
            #[cfg(feature = "otlp")]
            Self::Otlp(exporter) => exporter.dropped(),
        }
    }

    /// Sends what is queued and stops; returns the records dropped in all.
    #[must_use]
    pub fn finish(self) -> u64 {
        match self {
            Self::Ipfix(exporter) => exporter.finish(),
            #[cfg(feature = "otlp")]
            Self::Otlp(exporter) => exporter.finish(),
        }
    }
}
