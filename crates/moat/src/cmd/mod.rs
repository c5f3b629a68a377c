//! One module per subcommand.

pub mod auto;
pub mod container;
pub mod denials;
pub mod dev;
pub mod exec;
pub mod image;
pub mod image_trust;
pub mod inspect;
pub mod kernel;
pub mod kill;
pub mod logs;
pub mod moatd;
pub mod policy;
pub mod profile;
pub mod ps;
pub mod read_only;
pub mod registry;
pub mod run;
pub mod scan;
pub mod surface;
pub mod trust;
pub mod trust_roots;
pub mod volume;
pub mod vulndb;
pub mod vulndb_update;
