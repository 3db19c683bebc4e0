# shellcheck shell=bash
# Mesa's lavapipe: a software Vulkan device (the GPU kernels of Burn's wgpu backend, compiled
# and run on the CPU through LLVM), so that the wgpu training path is tested on machines without
# a GPU (`--device wgpu:cpu`). Sourced after scripts/lib/apt.sh; defines functions only.
#
#   kiln_lavapipe_install   installs Debian's mesa-vulkan-drivers and libvulkan1 with apt-get
#                           when lavapipe's driver manifest or the Vulkan loader is missing; sets
#                           kiln_lavapipe_note. Returns 2 when they are missing and cannot be
#                           installed, 1 when the installation fails.

kiln_lavapipe_note=""

kiln_lavapipe_present() {
  compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null \
    && { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
}

kiln_lavapipe_install() {
  local rc
  if ! kiln_lavapipe_present; then
    kiln_apt_install mesa-vulkan-drivers libvulkan1 || { rc=$?; return "$rc"; }
    kiln_lavapipe_present || { echo "lavapipe's driver (lvp_icd) or libvulkan.so.1 still missing after installing mesa-vulkan-drivers" >&2; return 1; }
  fi
  kiln_lavapipe_note="lavapipe $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || echo '(version unknown)')"
}
