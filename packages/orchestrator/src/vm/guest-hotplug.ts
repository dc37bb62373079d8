// The guest's half of virtio-mmio hot-plug, for the stock Debian kernel
// (no PCIe hot-plug, no virtio-mmio command-line devices): a busybox shell
// loop that the initramfs starts when the kernel command line says
// `vmm.hotplug=1` (vmm adds it when a management API is enabled).
//
// Every DTB virtio_mmio slot is a platform device. An empty slot reads
// DeviceID 0, so virtio_mmio's probe declines it and it stays unbound. When
// the host plugs a device into the slot, DeviceID turns non-zero: the helper
// binds the slot to the virtio-mmio driver, which probes it like a boot-time
// device (/dev/vdX, ethN… appears). Removal works the same for every device
// kind: the host sets DEVICE_NEEDS_RESET in the device status with a
// configuration change interrupt (virtio 1.2 §2.1.2), which it also does
// when a device's back-end is given up; the helper reads the status through
// sysfs (`virtioN/status`, which the kernel reads from the Status register
// on each access), unbinds the driver — which resets the device, and the
// host completes device_del — and does not bind that slot again until the
// host has emptied it (DeviceID 0). (/dev/mem reads of a slot a driver has
// claimed are refused by the kernel's IO_STRICT_DEVMEM, so the helper reads
// registers only of unbound slots.)
//
// The same loop is the guest's end of QMP system_powerdown: it polls the
// paravirtual power button (vcpu platform/power-button.ts) and, when it
// reads a press, acknowledges it and runs poweroff (init then syncs and
// powers off through the finisher), as acpid would on a PC.

import { VIRTIO_STATUS_DEVICE_NEEDS_RESET } from '@vmm/core';
import { MMIO } from '@vmm/vcpu';

const POWER_BUTTON = `0x${MMIO.power.base.toString(16)}`;
const NEEDS_RESET = `0x${VIRTIO_STATUS_DEVICE_NEEDS_RESET.toString(16)}`;

export const HOTPLUG_HELPER_PATH = '/sbin/vmm-hotplug';

export const HOTPLUG_HELPER = `#!/bin/sh
drv=/sys/bus/platform/drivers/virtio-mmio
released=" "
while :; do
  for dev in /sys/bus/platform/devices/*.virtio_mmio; do
    [ -e "$dev" ] || continue
    name=\${dev##*/}
    if [ -e "$dev/driver" ]; then
      for status in $dev/virtio*/status; do
        [ -e "$status" ] || continue
        if [ $(( $(cat $status) & ${NEEDS_RESET} )) != 0 ]; then
          echo "vmm-hotplug: $name needs a reset, releasing it" > /dev/kmsg
          released="$released$name "
          echo "$name" > $drv/unbind
        fi
      done
    else
      base=$((0x\${name%%.*}))
      id=$(devmem $((base + 0x8)) 32 2>/dev/null)
      case "$released" in
        *" $name "*) [ "$id" = 0x00000000 ] && released="\${released%% $name *} \${released#* $name }"; continue ;;
      esac
      if [ "$id" != 0x00000000 ] && [ "$(devmem $((base + 0xc)) 32 2>/dev/null)" != 0x54434A45 ]; then
        echo "vmm-hotplug: binding $name" > /dev/kmsg
        echo "$name" > $drv/bind 2>/dev/null
      fi
    fi
  done
  if [ "$(devmem ${POWER_BUTTON} 32 2>/dev/null)" = 0x00000001 ]; then
    devmem ${POWER_BUTTON} 32 0
    echo "vmm-hotplug: power button pressed, powering off" > /dev/kmsg
    poweroff
  fi
  sleep 1
done
`;
