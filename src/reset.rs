//! What a checkout may change on an actor's connection, and how check-in undoes it, so
//! that every checkout starts from the actor's defaults.
//!
//! A checkout hands out `&Connection`: rusqlite's hooks, busy handler and authorizer
//! setters take `&mut Connection`, so a caller cannot reach them. What it can change is
//! what SQL and rusqlite's `&self` methods change, and the actor's authorizer (which
//! denies ATTACH) watches every statement as it is prepared:
//! - a PRAGMA that sets one of the connection settings in [`SETTINGS`] marks the
//!   connection for a reset: check-in writes back every setting's value as it was read
//!   once per store, right after tuning (so durability and the tuning pragmas come back);
//! - a PRAGMA that sets anything else (except those in [`NO_CONNECTION_STATE`]), any
//!   pragma on the temp schema, or a TEMP table, index, view, trigger or virtual table
//!   marks it for closing: the next checkout opens a fresh connection;
//! - every check-in also restores the busy timeout and the `sqlite3_db_config` flags,
//!   which `&self` methods change without SQL.
//!
//! Not undone: functions, collations, modules and limits registered through rusqlite
//! features this crate does not enable, process-wide settings (`soft_heap_limit`,
//! `hard_heap_limit`), and anything done through the raw handle (unsafe code).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::OptionalExtension;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::Value;

use crate::error::Result;
use crate::pool::Sleeper;

/// Connection settings a checkout may change with a PRAGMA and check-in writes back.
const SETTINGS: &[&str] = &[
    "analysis_limit",
    "automatic_index",
    "cache_size",
    "cache_spill",
    "cell_size_check",
    "defer_foreign_keys",
    "foreign_keys",
    "ignore_check_constraints",
    "journal_mode",
    "journal_size_limit",
    "legacy_alter_table",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "query_only",
    "recursive_triggers",
    "reverse_unordered_selects",
    "secure_delete",
    "shoal_durability",
    "synchronous",
    "temp_store",
    "threads",
    "trusted_schema",
    "writable_schema",
];

/// PRAGMAs whose argument leaves no connection state behind: queries that take an
/// argument, writes to the database file itself (which are the actor's data), and
/// process-wide limits (which reopening would not undo either).
const NO_CONNECTION_STATE: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "busy_timeout", // restored at every check-in
    "encoding",
    "foreign_key_check",
    "foreign_key_list",
    "hard_heap_limit",
    "incremental_vacuum",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "optimize",
    "page_size",
    "quick_check",
    "schema_version",
    "shrink_memory",
    "soft_heap_limit",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
    "wal_checkpoint",
];

/// The `sqlite3_db_config` flags restored at every check-in.
const DB_CONFIGS: &[DbConfig] = &[
    DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY,
    DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
    DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER,
    DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
    DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
    DbConfig::SQLITE_DBCONFIG_TRIGGER_EQP,
    DbConfig::SQLITE_DBCONFIG_DEFENSIVE,
    DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA,
    DbConfig::SQLITE_DBCONFIG_LEGACY_ALTER_TABLE,
    DbConfig::SQLITE_DBCONFIG_DQS_DML,
    DbConfig::SQLITE_DBCONFIG_DQS_DDL,
    DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW,
    DbConfig::SQLITE_DBCONFIG_LEGACY_FILE_FORMAT,
    DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
    DbConfig::SQLITE_DBCONFIG_STMT_SCANSTATUS,
    DbConfig::SQLITE_DBCONFIG_REVERSE_SCANORDER,
    DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE,
    DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE,
    DbConfig::SQLITE_DBCONFIG_ENABLE_COMMENTS,
];

/// What the authorizer saw a checkout change.
#[derive(Debug, Default)]
struct Touched {
    /// A setting of [`SETTINGS`] was set.
    reset: AtomicBool,
    /// Something check-in cannot undo was changed.
    reopen: AtomicBool,
}

impl Touched {
    fn saw(&self, ctx: &AuthContext<'_>) {
        let flag = match ctx.action {
            AuthAction::Pragma {
                pragma_name,
                pragma_value,
            } => {
                let name = pragma_name.to_ascii_lowercase();
                if ctx.database_name == Some("temp") {
                    Some(&self.reopen)
                } else if pragma_value.is_none() || NO_CONNECTION_STATE.contains(&name.as_str()) {
                    None
                } else if SETTINGS.contains(&name.as_str()) {
                    Some(&self.reset)
                } else {
                    Some(&self.reopen)
                }
            }
            AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. } => Some(&self.reopen),
            AuthAction::CreateVtable { .. } if ctx.database_name == Some("temp") => {
                Some(&self.reopen)
            }
            _ => None,
        };
        if let Some(flag) = flag {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        self.reset.store(false, Ordering::Relaxed);
        self.reopen.store(false, Ordering::Relaxed);
    }
}

/// An actor's connection in the awake set, with what its checkouts changed.
#[derive(Debug)]
pub(crate) struct ActorConn {
    pub(crate) conn: Connection,
    touched: Arc<Touched>,
}

impl Sleeper for ActorConn {
    fn sleep(self) {
        self.conn.sleep();
    }
}

/// Installs the actor authorizer on `conn`: an actor sees its own database only, so
/// ATTACH of any file (and VACUUM INTO, which attaches its target) is denied; VACUUM's
/// own temporary database ("") stays allowed. It also records what each statement
/// changes (see the module doc). Call [`ActorConn::tuned`] once tuning is done.
pub(crate) fn watch(mut conn: Connection) -> Result<ActorConn> {
    let touched = Arc::new(Touched::default());
    let seen = Arc::clone(&touched);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if let AuthAction::Attach { filename } = ctx.action
            && !filename.is_empty()
        {
            return Authorization::Deny;
        }
        seen.saw(&ctx);
        Authorization::Allow
    }))?;
    Ok(ActorConn { conn, touched })
}

impl ActorConn {
    /// Forgets what tuning itself set: from here on the connection is at its defaults.
    pub(crate) fn tuned(self) -> ActorConn {
        self.touched.clear();
        self
    }

    /// Undoes what the last checkout changed. `Ok(false)`: it changed what cannot be
    /// undone, and the connection must be closed instead.
    pub(crate) fn reset(&mut self, defaults: &Defaults) -> Result<bool> {
        if self.touched.reopen.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.conn.busy_timeout(defaults.busy_timeout)?;
        for &(config, value) in &defaults.db_config {
            if self.conn.db_config(config)? != value {
                self.conn.set_db_config(config, value)?;
            }
        }
        if self.touched.reset.load(Ordering::Relaxed) {
            // A cached statement that set a pragma would set it again unseen (pragmas
            // are applied when a statement is prepared).
            self.conn.flush_prepared_statement_cache();
            self.conn.execute_batch(&defaults.pragmas)?;
            self.touched.clear();
        }
        Ok(true)
    }
}

/// An actor connection's defaults, read once per store from a freshly tuned connection.
#[derive(Debug)]
pub(crate) struct Defaults {
    /// `PRAGMA name = value;` for every setting of [`SETTINGS`] the connection has.
    pragmas: String,
    db_config: Vec<(DbConfig, bool)>,
    busy_timeout: Duration,
}

impl Defaults {
    pub(crate) fn read(conn: &ActorConn, busy_timeout: Duration) -> Result<Defaults> {
        let conn = &conn.conn;
        let mut pragmas = String::new();
        for name in SETTINGS {
            // A pragma this build or VFS does not know returns no row.
            let value: Option<Value> = conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .optional()?;
            let value = match value {
                Some(Value::Integer(i)) => i.to_string(),
                Some(Value::Text(t)) => format!("'{}'", t.replace('\'', "''")),
                _ => continue,
            };
            pragmas.push_str(&format!("PRAGMA {name} = {value};\n"));
        }
        let db_config = DB_CONFIGS
            .iter()
            .map(|&c| Ok((c, conn.db_config(c)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Defaults {
            pragmas,
            db_config,
            busy_timeout,
        })
    }
}
