//! todo
pub fn check(_: &[crate::history::Operation]) -> Result<super::CheckResult, super::CheckError> {
    todo!()
}
