package proto

// InventoryVersion is the version of the Inventory schema.
//
// History:
//
//	1: first version.
const InventoryVersion = 1

// Inventory is what a ramdisk's nodeagent reports of a machine's hardware.
// It is stored on the node as its `inventory`.
type Inventory struct {
	Version    int           `json:"version"`
	System     System        `json:"system"`
	Firmware   Firmware      `json:"firmware"`
	BootMode   string        `json:"boot_mode"` // "uefi" or "bios"
	PXEMAC     string        `json:"pxe_mac,omitempty"`
	CPUs       CPUs          `json:"cpus"`
	Memory     Memory        `json:"memory"`
	Disks      []Disk        `json:"disks"`
	Interfaces []Interface   `json:"interfaces"`
	PCI        []PCIDevice   `json:"pci,omitempty"`
	BMCAddress string        `json:"bmc_address,omitempty"`
	Collected  CollectedInfo `json:"collected"`
}

// System is the machine's identity (SMBIOS type 1).
type System struct {
	Vendor  string `json:"vendor"`
	Product string `json:"product"`
	Serial  string `json:"serial"`
	UUID    string `json:"uuid"`
}

// Firmware is the BIOS or UEFI firmware (SMBIOS type 0).
type Firmware struct {
	Vendor  string `json:"vendor,omitempty"`
	Version string `json:"version,omitempty"`
	Date    string `json:"date,omitempty"`
}

// CPUs describes the processors.
type CPUs struct {
	Count        int      `json:"count"` // logical CPUs
	Model        string   `json:"model"`
	Architecture string   `json:"architecture"`
	Sockets      int      `json:"sockets,omitempty"`
	Cores        int      `json:"cores,omitempty"` // physical cores in all
	Threads      int      `json:"threads,omitempty"`
	MHz          float64  `json:"mhz,omitempty"`
	Flags        []string `json:"flags,omitempty"`
}

// Memory describes RAM.
type Memory struct {
	TotalBytes    int64  `json:"total_bytes"`              // what the kernel sees
	PhysicalBytes int64  `json:"physical_bytes,omitempty"` // sum of DIMMs, when readable
	DIMMs         []DIMM `json:"dimms,omitempty"`
}

// DIMM is one memory module (SMBIOS type 17).
type DIMM struct {
	Locator   string `json:"locator,omitempty"`
	SizeBytes int64  `json:"size_bytes"`
	Type      string `json:"type,omitempty"`
	SpeedMTs  int    `json:"speed_mts,omitempty"`
}

// Disk is one block device (no ramdisks, loops or CD-ROMs).
type Disk struct {
	Name       string `json:"name"`
	SizeBytes  int64  `json:"size_bytes"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	WWN        string `json:"wwn,omitempty"`
	Rotational bool   `json:"rotational"`
	ByPath     string `json:"by_path,omitempty"`
	// RAID is the level of a Linux software RAID array ("raid0",
	// "raid1", "raid10", as /sys/block/mdN/md/level has it); empty for a
	// plain disk.
	RAID string `json:"raid,omitempty"`
	// Members are the names of an array's member devices (sorted).
	Members []string `json:"members,omitempty"`
}

// Interface is one network interface.
type Interface struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac"`
	Driver    string   `json:"driver,omitempty"`
	SpeedMbps int      `json:"speed_mbps,omitempty"`
	Carrier   bool     `json:"carrier"`
	Addresses []string `json:"addresses,omitempty"`
	LLDP      *LLDP    `json:"lldp,omitempty"`
}

// LLDP is the switch port an interface is cabled to.
type LLDP struct {
	ChassisID  string `json:"chassis_id,omitempty"`
	PortID     string `json:"port_id,omitempty"`
	SystemName string `json:"system_name,omitempty"`
}

// PCIDevice is one PCI function.
type PCIDevice struct {
	Address string `json:"address"`
	Vendor  string `json:"vendor"` // hex id
	Device  string `json:"device"` // hex id
	Class   string `json:"class"`  // hex class code
}

// CollectedInfo says when and how fast the inventory was taken.
type CollectedInfo struct {
	At         string `json:"at,omitempty"` // RFC 3339
	DurationMS int64  `json:"duration_ms,omitempty"`
	Agent      string `json:"agent,omitempty"` // nodeagent version
}
