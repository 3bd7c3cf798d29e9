"""The releases a 22H2 cluster can be taken to, as data: each value with the page it comes from.

The reference procedure (../shared/reference/domain.md) goes to 23H2 (25398). Since release 2505 Microsoft also
documents a direct path from 20349 to 26100 (24H2, "one less upgrade hop"). Everything that differs between the
two (build, minimum source build, media, cumulative-update rule, functional level, pool version, prerequisites,
registry values, the workload policy the page recommends, CAU's arguments) lives here, so the engine, the
preflight, the post-OS steps, readiness and the simulator read one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

ReleaseName = Literal["23H2", "24H2"]
WorkloadPolicy = Literal["live-migrate", "shut-down"]

DOCS = "MicrosoftDocs/azure-stack-docs"
PAGE_23H2 = f"{DOCS}: azure-local/upgrade/upgrade-22h2-to-23h2-powershell.md@b86ec95f"
PAGE_24H2 = f"{DOCS}: azure-local/upgrade/upgrade-22h2-to-24h2-powershell.md@01d506df"
PAGE_TO_24H2 = f"{DOCS}: azure-local/upgrade/upgrade-to-24h2-powershell.md@05ff0df4"
SOLUTION_PAGE = f"{DOCS}: azure-local/upgrade/install-solution-upgrade.md@0d02bed3"
CHECKER = "AzStackHci.EnvironmentChecker (reference/domain.md §2.2, Test-RequiredWindowsVersionForUpgrade)"
EOS_22H2 = f"{DOCS}: azure-local/includes/end-of-service-22h2.md@009be3b7"
REFS_KEY = (r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem", "RefsEnableMetadataValidation")
VID_KEY = (r"HKLM:\SYSTEM\CurrentControlSet\Services\Vid\Parameters", "SkipSmallLocalAllocations")


@dataclass(frozen=True)
class NicDriver:
    """A NIC vendor's inbox driver on the target OS and the version Microsoft recommends instead."""

    vendor: str  # matched against the adapter's DriverProvider
    inbox: str
    recommended: str


@dataclass(frozen=True)
class Release:
    name: ReleaseName
    build: str  # a node on this build (any UBR) runs the release
    min_source: str  # the lowest 22H2 build the path starts from
    media: str  # what the page asks to stage
    media_build: str  # the build that media installs (the simulator's default)
    lcu_minimum: str  # the environment checker's minimum cumulative update, the same on every node
    functional_level: int
    pool_version: int  # the lowest pool Version (MSFT_StoragePool.Version) the checker accepts
    registry: tuple[tuple[str, str], ...]  # values set to 0 on every node, then a restart, before the OS upgrade
    workload_policy: WorkloadPolicy  # what the current page recommends for the VMs during the OS upgrade
    nic_drivers: tuple[NicDriver, ...]  # NIC drivers that must be newer than the target's inbox ones
    cloud_management_cleanup: bool  # the "Cloud Management" cluster group is removed before the upgrade
    cau_arguments: tuple[str, ...]  # Invoke-CauRun's switches for the offline run, besides the plugin's
    end_of_support: date | None
    sources: dict[str, str]  # what each value rests on
    solution_undocumented: str = ""  # why hci-upgrade stops before the solution upgrade, when it does

    @property
    def number(self) -> str:
        """The build number alone: 25398, 26100."""
        return self.build.split(".")[2]

    def runs(self, build: str) -> bool:
        """Whether a node on `build` runs this release."""
        return build.split(".")[2:3] == [self.number]


RELEASES: dict[str, Release] = {r.name: r for r in (
    Release(
        name="23H2", build="10.0.25398", min_source="10.0.20349", media="the 2503 ISO (25398.1486), extracted",
        media_build="10.0.25398.1486", lcu_minimum="10.0.25398.1904", functional_level=12, pool_version=28,
        registry=(REFS_KEY, VID_KEY), workload_policy="shut-down", nic_drivers=(),
        cloud_management_cleanup=False, cau_arguments=("-Force",), end_of_support=date(2026, 4, 30),
        sources={
            "build, min_source, media, media_build": PAGE_23H2,
            "lcu_minimum": CHECKER + ": 'Will enforce any 10B+ LCU'",
            "functional_level": "reference/domain.md §3.5 (Test-ClusterFunctionalLevel: -eq 12)",
            "pool_version": "reference/domain.md §2.2 (Test-HciStoragePool: Version >= 28)",
            "registry": PAGE_23H2 + " (Step 0) and the TSG on live migration of dynamic-memory VMs",
            "workload_policy": PAGE_23H2 + " (prerequisites: 'We recommend shutting down VMs')",
            "cau_arguments": PAGE_23H2 + " (the offline Invoke-CauRun)",
            # [UNVERIFIED] the day: the "April 2026", 11.2510 its last release (reference/domain.md §4.1)
            "end_of_support": "release-information-23h2.md: 11.2510 the last 23H2 release; April 2026",
        }),
    Release(
        name="24H2", build="10.0.26100", min_source="10.0.20349.3692", media="the 2505 ISO (26100), extracted",
        # [UNVERIFIED] the 2505 ISO's UBR: the pages say 26100.x; the simulator's default, a knob (ClusterSpec)
        media_build="10.0.26100.4061", lcu_minimum="10.0.26100.32814", functional_level=12, pool_version=28,
        registry=(REFS_KEY,), workload_policy="shut-down",
        nic_drivers=(NicDriver("Intel", "1.15.121.0", "1.17.73.0"), NicDriver("NVIDIA", "24.4.26429.0", "25.4.50020"),
                     NicDriver("Mellanox", "24.4.26429.0", "25.4.50020")),
        cloud_management_cleanup=True, cau_arguments=("-EnableFirewallRules", "-ForceSelfUpdate", "-Force"),
        end_of_support=None,
        sources={
            "build, min_source ('20349.3692 (22H2 5B)'), media": PAGE_24H2,
            "lcu_minimum": CHECKER + " (as written in the source)",
            # [INFER] the checker's Test-ClusterFunctionalLevel wants 12 and its OS test accepts 26100
            "functional_level": "reference/domain.md §2.2, §3.5",
            "pool_version": "reference/domain.md §2.2 (28 = 'Windows Server 2025' on 24H2)",
            "registry": PAGE_TO_24H2 + " ('Update registry keys': the ReFS value only)",
            "workload_policy": PAGE_24H2 + " (prerequisites: 'We recommend shutting down VMs')",
            "nic_drivers": PAGE_TO_24H2 + " (the inbox and recommended driver table; NVIDIA's adapters report "
                                          "the Mellanox provider [INFER])",
            "oem": PAGE_24H2 + " ('Consult your OEM ... compatible drivers')",
            # [UNVERIFIED] the pages do not name the clean-up; reference/domain.md §3.4 says the 24H2 path cleans
            # the group's resources
            "cloud_management_cleanup": "reference/domain.md §3.4",
            "cau_arguments": PAGE_TO_24H2 + " (Invoke-CauRun ... -EnableFirewallRules ... -ForceSelfUpdate -Force)",
            "solution_undocumented": SOLUTION_PAGE,
        },
        solution_undocumented=(
            "Microsoft documents the solution upgrade after a 23H2 OS upgrade (" + SOLUTION_PAGE + "), not after "
            "the direct OS upgrade to 24H2: hci-upgrade stops after the post-OS steps and readiness there; apply "
            "the solution from the portal's Upgrade banner when Microsoft offers it for this cluster")),
)}

DEFAULT_RELEASE: ReleaseName = "23H2"  # the reference procedure's target
END_OF_SUPPORT_22H2 = date(2025, 5, 31)  # EOS_22H2


def release(name: str | None) -> Release:
    return RELEASES[name or DEFAULT_RELEASE]


def support_notes(target: Release, today: date | None = None) -> list[str]:
    """What an operator should know about the target's support today, for the plan, readiness and survey."""
    today = today or date.today()
    if target.end_of_support is not None and today > target.end_of_support:
        direct = RELEASES["24H2"]
        return [f"the {target.name} OS is out of support since {target.end_of_support:%Y-%m-%d}: since release 2505 "
                f"Microsoft documents a direct path from 22H2 to {direct.name} ({direct.number}, nodes at "
                f"{direct.min_source} or later): TargetRelease: {direct.name}"]
    return []


def version_tuple(build: str) -> tuple[int, ...]:
    return tuple(int(p) for p in build.split("."))


def at_least(build: str, minimum: str) -> bool:
    """`build` is `minimum` or later, compared part by part on as many parts as the minimum has."""
    want = version_tuple(minimum)
    return version_tuple(build)[: len(want)] >= want
