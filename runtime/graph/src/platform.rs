//! Target platforms of native actions: one type for the `platform` attribute, `--platform`,
//! `[build] platform`, the scheduler's passes and the REAPI platform properties.

use crate::workspace::OUT_DIR;

/// A platform name that is none of [`Platform::ALL`]'s (nor an alias of one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform {0:?}: use linux-x86_64 or linux-arm64")]
pub struct UnknownPlatform(pub String);

/// Target platform of native actions. WASI actions are portable and do not depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    LinuxX86_64,
    LinuxArm64,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::LinuxX86_64, Platform::LinuxArm64];

    /// The machine wbuild runs on.
    pub fn host() -> Platform {
        if std::env::consts::ARCH == "aarch64" {
            Platform::LinuxArm64
        } else {
            Platform::LinuxX86_64
        }
    }

    /// `linux-x86_64` or `linux-arm64` (also `linux-amd64`, `linux-x86-64`, `linux-aarch64`),
    /// wherever a platform is named.
    pub fn parse(s: &str) -> Result<Platform, UnknownPlatform> {
        match s {
            "linux-x86_64" | "linux-amd64" | "linux-x86-64" => Ok(Platform::LinuxX86_64),
            "linux-arm64" | "linux-aarch64" => Ok(Platform::LinuxArm64),
            _ => Err(UnknownPlatform(s.to_owned())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Platform::LinuxX86_64 => "linux-x86_64",
            Platform::LinuxArm64 => "linux-arm64",
        }
    }

    /// REAPI `ISA` platform property value.
    pub fn isa(&self) -> &'static str {
        match self {
            Platform::LinuxX86_64 => "x86-64",
            Platform::LinuxArm64 => "aarch64",
        }
    }

    /// GNU target triple of the cross toolchain (Debian's `gcc-<triple>` packages).
    pub fn triple(&self) -> &'static str {
        match self {
            Platform::LinuxX86_64 => "x86_64-linux-gnu",
            Platform::LinuxArm64 => "aarch64-linux-gnu",
        }
    }

    /// Where outputs of a build for this platform are materialised, relative to the
    /// workspace root: `wbuild-out` for the host, `wbuild-out/<platform>` otherwise, so the
    /// outputs of different platforms never collide.
    pub fn out_dir(&self) -> String {
        if *self == Platform::host() {
            OUT_DIR.to_owned()
        } else {
            format!("{OUT_DIR}/{}", self.name())
        }
    }

    /// The tools native actions use (`$CC`, `$CXX`, `$AR`, `$TEST_RUNNER`): the host's gcc,
    /// or the Debian cross toolchain and qemu-user for another platform.
    pub fn tool_env(&self) -> Vec<(&'static str, String)> {
        if *self == Platform::host() {
            vec![
                ("AR", "ar".into()),
                ("CC", "gcc".into()),
                ("CXX", "g++".into()),
                ("TEST_RUNNER", String::new()),
            ]
        } else {
            let t = self.triple();
            let qemu = match self {
                Platform::LinuxX86_64 => "qemu-x86_64-static",
                Platform::LinuxArm64 => "qemu-aarch64-static",
            };
            vec![
                ("AR", format!("{t}-ar")),
                ("CC", format!("{t}-gcc")),
                ("CXX", format!("{t}-g++")),
                ("TEST_RUNNER", format!("{qemu} -L /usr/{t}")),
            ]
        }
    }
}
