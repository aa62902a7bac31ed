//! serde for the contract's named enums ([`crate::CloseReason`],
//! [`crate::LossPoint`]): each is written as the name the output format
//! uses (`"released"`, `"ring_buffer_full"`), and read back from it.

/// Implements `Serialize` and `Deserialize` for `$type` through its
/// `name()` and `from_name()`; `$what` names it in errors ("a loss point").
macro_rules! serde_by_name {
    ($type:ty, $what:literal) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::from_name(&name).ok_or_else(|| {
                    let expected: Vec<&str> = Self::ALL.iter().map(Self::name).collect();
                    serde::de::Error::custom(format!(
                        "unknown name {name:?} for {}: expected one of {}",
                        $what,
                        expected.join(", ")
                    ))
                })
            }
        }
    };
}

pub(crate) use serde_by_name;

#[cfg(test)]
mod tests {
    use crate::{CloseReason, LossPoint};

    #[test]
    fn named_enums_serialize_as_the_output_names() {
        assert_eq!(
            serde_json::to_string(&CloseReason::SocketReleased).unwrap(),
            "\"released\""
        );
        assert_eq!(
            serde_json::from_str::<LossPoint>("\"ring_buffer_full\"").unwrap(),
            LossPoint::RingBufferFull
        );
        let error = serde_json::from_str::<CloseReason>("\"SocketReleased\"").unwrap_err();
        assert!(
            error.to_string().contains("expected one of fin, reset"),
            "{error}"
        );
    }
}
