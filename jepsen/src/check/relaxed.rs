//! todo
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelaxedConfig {
    pub budget_ms: u64,
    pub skew_ms: u64,
}
pub fn check(
    _: &[crate::history::Operation],
    _: &RelaxedConfig,
    _: &[crate::fault::FaultWindow],
) -> Result<super::CheckResult, super::CheckError> {
    todo!()
}
