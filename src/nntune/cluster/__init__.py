"""Running a search beyond one machine: its workers placed by a cluster engine (Ray), one shared study."""
