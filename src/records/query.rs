//! The query commands over the records: status, history, at, compare, where.

use crate::cli::{AtArgs, CompareArgs, HistoryArgs, QueryArgs, WhereArgs};
use crate::exit::ExitCode;

/// `imagetrail status`.
pub fn status(_args: QueryArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status is not implemented yet")
}

/// `imagetrail history`.
pub fn history(_args: HistoryArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("history is not implemented yet")
}

/// `imagetrail at TIME`.
pub fn at(_args: AtArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("at is not implemented yet")
}

/// `imagetrail compare REF`.
pub async fn compare(_args: CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("compare is not implemented yet")
}

/// `imagetrail where REF`.
pub fn where_(_args: WhereArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("where is not implemented yet")
}
