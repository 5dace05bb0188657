package proto

// SettingsView is the answer of GET and PATCH /v1/settings: the settings
// and what they amount to, computed on read (never stored, read-only).
type SettingsView struct {
	Settings
	// DiscoveryActive: unknown machines are booted into discovery now,
	// which needs discovery_enabled and a kernel and a ramdisk image
	// that exist.
	DiscoveryActive bool `json:"discovery_active"`
	// DiscoveryInactiveReason says why discovery is not active, naming
	// the setting ("discovery.kernel is not set").
	DiscoveryInactiveReason string `json:"discovery_inactive_reason,omitempty"`
	// TasksReady: tasks can boot (tasks.kernel and tasks.ramdisk name
	// images of the right kinds); TasksNotReadyReason says why not.
	TasksReady          bool   `json:"tasks_ready"`
	TasksNotReadyReason string `json:"tasks_not_ready_reason,omitempty"`
}
