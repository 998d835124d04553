"""Study specs shipped with accelopt: one TOML file per study, the file stem is its name."""
