//! Where `hedge-demo local` keeps the group's state: the embedded in-memory store (the
//! default), a Spanner database (`--spanner`), or a Cloud Spanner emulator it starts itself
//! (`--emulator`).

use hedge::store::schema::{self, SchemaError, TableNames};
use hedge::store::spanner::SpannerOptions;
use hedge::{DatabasePath, HedgeBuilder, MemoryStore};
use hedge_tests::{Emulator, HarnessError};

/// The store could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The emulator is missing or did not start.
    #[error(transparent)]
    Emulator(#[from] HarnessError),
    /// The schema could not be checked or provisioned.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The database lacks hedge's tables.
    #[error(
        "{database} does not hold hedge's schema (version found: {found}; missing: {missing}): \
         create it with `cargo run -p hedge-operator -- schema apply --database {database}`"
    )]
    NotProvisioned {
        /// The database.
        database: String,
        /// The version recorded, if any.
        found: String,
        /// What is missing.
        missing: String,
    },
}

/// The store of a local group.
pub enum Backend {
    /// One in-memory store shared by every member of this process.
    Memory(MemoryStore),
    /// A Spanner database: every member gets its own client, as pods would.
    Spanner {
        /// The database.
        database: DatabasePath,
        /// How to reach it.
        options: SpannerOptions,
        /// The emulator this process started (stopped when dropped).
        emulator: Option<Box<Emulator>>,
    },
}

impl Backend {
    /// The in-memory store.
    pub fn memory() -> Self {
        Backend::Memory(MemoryStore::new())
    }

    /// An existing database, whose schema must be current (`SPANNER_EMULATOR_HOST` is
    /// honoured, as everywhere in hedge).
    pub async fn spanner(database: DatabasePath) -> Result<Self, BackendError> {
        let options = SpannerOptions::default();
        let status = schema::check_schema(&database, &TableNames::default(), &options).await?;
        if !status.missing.is_empty() {
            return Err(BackendError::NotProvisioned {
                database: database.to_string(),
                found: status
                    .version_found
                    .map_or_else(|| "none".to_owned(), |v| v.to_string()),
                missing: status
                    .missing
                    .iter()
                    .map(|i| match &i.column {
                        Some(c) => format!("{}.{c}", i.table),
                        None => i.table.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(Backend::Spanner {
            database,
            options,
            emulator: None,
        })
    }

    /// Starts the Cloud Spanner emulator (as the tests do), creates a database and provisions
    /// hedge's schema in it.
    pub async fn emulator() -> Result<Self, BackendError> {
        let emulator = Emulator::start_for_program().await?;
        let database = emulator
            .create_database_with_schema(&TableNames::default())
            .await?;
        Ok(Backend::Spanner {
            database,
            options: emulator.options(),
            emulator: Some(Box::new(emulator)),
        })
    }

    /// `builder` pointed at this store.
    pub fn attach(&self, builder: HedgeBuilder) -> HedgeBuilder {
        match self {
            Backend::Memory(store) => builder.store(store.clone()),
            Backend::Spanner {
                database, options, ..
            } => builder
                .spanner(database.clone())
                .spanner_options(options.clone()),
        }
    }

    /// The store's short name, for the report: `memory`, `spanner` or `spanner-emulator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Spanner { emulator: None, .. } => "spanner",
            Backend::Spanner {
                emulator: Some(_), ..
            } => "spanner-emulator",
        }
    }

    /// A phrase for the first line of the walkthrough.
    pub fn describe(&self) -> String {
        match self {
            Backend::Memory(_) => "the embedded in-memory store".to_owned(),
            Backend::Spanner {
                database,
                emulator: None,
                ..
            } => format!("Spanner database {database}"),
            Backend::Spanner {
                database,
                emulator: Some(e),
                ..
            } => format!(
                "a Cloud Spanner emulator started for this run ({}, database {})",
                e.grpc_host(),
                database.database
            ),
        }
    }
}
