// The guest's half of virtio-mmio hot-plug, for the stock Debian kernel
// (no PCIe hot-plug, no virtio-mmio command-line devices): a busybox shell
// loop that the initramfs starts when the kernel command line says
// `vmm.hotplug=1` (vmm adds it when a management API is enabled).
//
// Every DTB virtio_mmio slot is a platform device. An empty slot reads
// DeviceID 0, so virtio_mmio's probe declines it and it stays unbound. When
// the host plugs a device into the slot, DeviceID turns non-zero: the helper
// binds the slot to the virtio-mmio driver, which probes it like a boot-time
// device (/dev/vdX appears). For removal the host reports a capacity of 0
// sectors through a config-change interrupt (virtio 1.2 §4.2.2, §5.2.4), as
// a medium being taken out; the helper sees the disk's size drop to 0 and
// unbinds the driver, which flushes and resets the device; the host sees the
// reset and completes device_del. (/dev/mem reads of a slot a driver has
// claimed are refused by the kernel's IO_STRICT_DEVMEM, so the helper only
// reads registers of unbound slots.)
//
// The same loop is the guest's end of QMP system_powerdown: it polls the
// paravirtual power button (vcpu platform/power-button.ts) and, when it
// reads a press, acknowledges it and runs poweroff (init then syncs and
// powers off through the finisher), as acpid would on a PC.

import { MMIO } from '@vmm/vcpu';

const POWER_BUTTON = `0x${MMIO.power.base.toString(16)}`;

export const HOTPLUG_HELPER_PATH = '/sbin/vmm-hotplug';

export const HOTPLUG_HELPER = `#!/bin/sh
drv=/sys/bus/platform/drivers/virtio-mmio
while :; do
  for dev in /sys/bus/platform/devices/*.virtio_mmio; do
    [ -e "$dev" ] || continue
    name=\${dev##*/}
    if [ -e "$dev/driver" ]; then
      for size in $dev/virtio*/block/*/size; do
        if [ -e "$size" ] && [ "$(cat $size)" = 0 ]; then
          echo "vmm-hotplug: releasing $name" > /dev/kmsg
          echo "$name" > $drv/unbind
        fi
      done
    else
      base=$((0x\${name%%.*}))
      if [ "$(devmem $((base + 0x8)) 32 2>/dev/null)" != 0x00000000 ] && [ "$(devmem $((base + 0xc)) 32 2>/dev/null)" != 0x54434A45 ]; then
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
