// virtio-net constants (virtio 1.2 §5.1). Defined once here; every other
// module of the package imports them.

/** Device ID (virtio 1.2 §5). */
export const VIRTIO_ID_NET = 1;

/** Feature bits (virtio 1.2 §5.1.3). */
export const VIRTIO_NET_F_CSUM = 1n << 0n;
export const VIRTIO_NET_F_GUEST_CSUM = 1n << 1n;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 1n << 2n;
export const VIRTIO_NET_F_MTU = 1n << 3n;
export const VIRTIO_NET_F_MAC = 1n << 5n;
export const VIRTIO_NET_F_GUEST_TSO4 = 1n << 7n;
export const VIRTIO_NET_F_GUEST_TSO6 = 1n << 8n;
export const VIRTIO_NET_F_GUEST_ECN = 1n << 9n;
export const VIRTIO_NET_F_HOST_TSO4 = 1n << 11n;
export const VIRTIO_NET_F_HOST_TSO6 = 1n << 12n;
export const VIRTIO_NET_F_HOST_ECN = 1n << 13n;
export const VIRTIO_NET_F_MRG_RXBUF = 1n << 15n;
export const VIRTIO_NET_F_STATUS = 1n << 16n;
export const VIRTIO_NET_F_CTRL_VQ = 1n << 17n;
export const VIRTIO_NET_F_CTRL_RX = 1n << 18n;
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 1n << 20n;
export const VIRTIO_NET_F_MQ = 1n << 22n;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 1n << 23n;

/** Config space layout (virtio 1.2 §5.1.4): mac[6], status, max_virtqueue_pairs, mtu. */
export const CONFIG_MAC = 0;
export const CONFIG_STATUS = 6;
export const CONFIG_MAX_VQ_PAIRS = 8;
export const CONFIG_MTU = 10;
export const CONFIG_SIZE = 12;

/** Config `status` bits (§5.1.4). */
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** MQ limits (§5.1.4: max_virtqueue_pairs 1..0x8000); this device serves at most 8. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
export const MAX_QUEUE_PAIRS = 8;

/** virtio_net_hdr (§5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VNET_HDR_LEN = 12;
/** The header without num_buffers: legacy drivers without VERSION_1 nor MRG_RXBUF (§5.1.6.1). */
export const VNET_HDR_LEN_LEGACY = 10;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** Control queue (§5.1.6.5): class, command, data, ack. */
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
export const VIRTIO_NET_CTRL_RX_ALLUNI = 2;
export const VIRTIO_NET_CTRL_RX_NOMULTI = 3;
export const VIRTIO_NET_CTRL_RX_NOUNI = 4;
export const VIRTIO_NET_CTRL_RX_NOBCAST = 5;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5;
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET = 0;

/** Ethernet: header, the largest frame without GSO for a given MTU (header + one VLAN tag), and the largest GSO frame. */
export const ETH_HLEN = 14;
export const ETH_VLAN_HLEN = 4;
export const DEFAULT_MTU = 1500;
/** A GSO super-frame is at most 64 KiB of IP packet plus the Ethernet header (and a VLAN tag). */
export const MAX_GSO_FRAME = 65535 + ETH_HLEN + ETH_VLAN_HLEN;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_VLAN = 0x8100;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;
