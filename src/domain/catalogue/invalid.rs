//! Validation reasons: what is wrong with one field of a request or a WebSocket command. Each
//! reason has one message, built around the field's name ("width 64 ile 2048 arasında…").

/// What is wrong with a field. [`Invalid::message`] says it in Turkish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A field the request does not take (the field is the unknown name).
    UnknownField,
    /// A required field is missing.
    Required,
    /// A WebSocket command without the message id it acts on.
    MessageIdRequired,
    /// Text outside `min..=max` characters (or only whitespace).
    Chars {
        /// Fewest characters.
        min: usize,
        /// Most characters.
        max: usize,
    },
    /// Text over `max` characters.
    AtMostChars {
        /// Most characters.
        max: usize,
    },
    /// Not an integer in `min..=max`.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// Not a number in `min..=max`.
    Number {
        /// Smallest value.
        min: u32,
        /// Largest value.
        max: u32,
    },
    /// An image side outside `min..=max` or not a multiple of 8.
    ImageSide {
        /// Smallest side.
        min: u32,
        /// Largest side.
        max: u32,
    },
    /// Not a JSON object.
    NotAnObject,
    /// Not a string.
    NotText,
    /// Not `true` or `false`.
    NotBoolean,
    /// Objects nested deeper than `max` levels.
    TooDeep {
        /// Most levels.
        max: usize,
    },
    /// Larger than `kib` KiB once serialized.
    TooLarge {
        /// Most KiB.
        kib: usize,
    },
    /// A NUL character (no database text column holds one).
    Nul,
    /// Not one of `choices` (a comma-separated list).
    OneOf {
        /// The accepted values.
        choices: &'static str,
    },
    /// Not a message id (a UUID).
    NotMessageId,
    /// Not `min..=max` visible ASCII characters (header tokens).
    VisibleAscii {
        /// Fewest characters.
        min: usize,
        /// Most characters.
        max: usize,
    },
    /// Not a user name of `1..=max` characters.
    UserName {
        /// Most characters.
        max: usize,
    },
    /// A checkpoint or sampler no backend offers (`GET /api/v1/models` lists what they do).
    NotOffered {
        /// What was asked for (cut to 64 characters).
        name: String,
    },
    /// A WebSocket command type the gateway does not know.
    UnknownCommand {
        /// The type sent (cut to 64 characters).
        name: String,
    },
    /// A plain GET of the WebSocket address.
    NotWebSocket,
    /// A WebSocket handshake without what RFC 6455 requires.
    BadHandshake,
}

impl Invalid {
    /// The exact user-facing message about `field`.
    pub fn message(&self, field: &str) -> String {
        match self {
            Invalid::UnknownField => format!("Bilinmeyen alan: '{field}'."),
            Invalid::Required => format!("{field} alanı zorunludur."),
            Invalid::MessageIdRequired => format!("{field} alanı zorunludur (mesaj kimliği)."),
            Invalid::Chars { min, max } => {
                format!("{field} {min} ile {max} karakter arasında olmalıdır.")
            }
            Invalid::AtMostChars { max } => format!("{field} en fazla {max} karakter olabilir."),
            Invalid::Integer { min, max } => {
                format!("{field} {min} ile {max} arasında bir tam sayı olmalıdır.")
            }
            Invalid::Number { min, max } => {
                format!("{field} {min} ile {max} arasında bir sayı olmalıdır.")
            }
            Invalid::ImageSide { min, max } => {
                format!("{field} {min} ile {max} arasında ve 8'in katı olmalıdır.")
            }
            Invalid::NotAnObject => format!("{field} bir JSON nesnesi olmalıdır."),
            Invalid::NotText => format!("{field} bir metin (string) olmalıdır."),
            Invalid::NotBoolean => format!("{field} true ya da false olmalıdır."),
            Invalid::TooDeep { max } => format!("{field} en fazla {max} seviye iç içe olabilir."),
            Invalid::TooLarge { kib } => format!("{field} en fazla {kib} KiB olabilir."),
            Invalid::Nul => format!("{field} NUL karakteri içeremez."),
            Invalid::OneOf { choices } => format!("{field} şunlardan biri olmalıdır: {choices}."),
            Invalid::NotMessageId => format!("{field} bir mesaj kimliği (UUID) olmalıdır."),
            Invalid::VisibleAscii { min, max } => format!(
                "{field} {min} ile {max} arasında görünür ASCII karakterden oluşmalıdır."
            ),
            Invalid::UserName { max } => {
                format!("{field} 1 ile {max} karakter arasında bir ad olmalıdır.")
            }
            Invalid::UnknownCommand { name } => format!("Bilinmeyen komut: '{name}'."),
            Invalid::NotOffered { name } => format!(
                "{field} sunucuların sunduklarından biri olmalıdır: '{name}' bulunamadı."
            ),
            Invalid::NotWebSocket => {
                "Bu adres bir WebSocket bağlantısı bekliyor (Upgrade: websocket).".to_owned()
            }
            Invalid::BadHandshake => "Geçersiz WebSocket el sıkışması (Connection: Upgrade, Sec-WebSocket-Version: 13 ve Sec-WebSocket-Key gerekir).".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_bounds() {
        assert_eq!(
            Invalid::ImageSide { min: 64, max: 2048 }.message("width"),
            "width 64 ile 2048 arasında ve 8'in katı olmalıdır."
        );
        assert_eq!(
            Invalid::Integer { min: 1, max: 150 }.message("steps"),
            "steps 1 ile 150 arasında bir tam sayı olmalıdır."
        );
        assert_eq!(
            Invalid::UnknownField.message("colour"),
            "Bilinmeyen alan: 'colour'."
        );
    }
}
