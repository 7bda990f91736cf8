/**
 * IP allocation from the function pool, as the seed's `allocate_ip`: the lowest free address counting from host
 * `.10` of the pool upward, stopping before the broadcast address.
 *
 * @module
 */

/** Raised when every address of the pool is taken; the API answers 503. */
export class PoolExhaustedError extends Error {
  constructor(pool: string, options?: ErrorOptions) {
    super(`no free IP address left in the pool ${pool}`, options);
    this.name = "PoolExhaustedError";
  }
}

/** Parses dotted IPv4 into an unsigned 32-bit number. @throws {TypeError} when malformed. */
export function ipv4ToInt(ip: string): number {
  const parts = ip.split(".");
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new TypeError(`invalid IPv4 address ${JSON.stringify(ip)}`);
  }
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
}

/** Formats an unsigned 32-bit number as dotted IPv4. */
export function intToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

/** The first host offset handed out, as in the seed. */
export const FIRST_HOST = 10;

/** An IPv4 pool given in CIDR notation. */
export class IpPool {
  readonly cidr: string;
  readonly #first: number;
  readonly #last: number;

  /**
   * @throws {TypeError} when `cidr` is not IPv4 CIDR notation.
   * @throws {RangeError} when the prefix leaves no address from host `.10` upward.
   */
  constructor(cidr: string) {
    const match = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
    if (!match) throw new TypeError(`invalid IP pool ${JSON.stringify(cidr)}: expected IPv4 CIDR such as 10.0.0.0/24`);
    const prefix = Number(match[2]);
    if (prefix > 32) throw new TypeError(`invalid IP pool ${JSON.stringify(cidr)}: prefix over 32`);
    const size = 2 ** (32 - prefix);
    const network = ipv4ToInt(match[1]!) - (ipv4ToInt(match[1]!) % size);
    this.cidr = `${intToIpv4(network)}/${prefix}`;
    this.#first = network + FIRST_HOST;
    this.#last = network + size - 2; // below the broadcast address
    if (this.#first > this.#last) {
      throw new RangeError(`IP pool ${cidr} is too small: addresses are handed out from host .${FIRST_HOST}`);
    }
  }

  /** How many addresses the pool can hand out. */
  get capacity(): number {
    return this.#last - this.#first + 1;
  }

  /** Whether `ip` is one this pool hands out. */
  contains(ip: string): boolean {
    try {
      const n = ipv4ToInt(ip);
      return n >= this.#first && n <= this.#last;
    } catch {
      return false;
    }
  }

  /**
   * The lowest address not in `used`.
   *
   * @throws {PoolExhaustedError} when every address is taken.
   */
  allocate(used: Iterable<string>): string {
    const taken = new Set(used);
    for (let n = this.#first; n <= this.#last; n++) {
      const ip = intToIpv4(n);
      if (!taken.has(ip)) return ip;
    }
    throw new PoolExhaustedError(this.cidr);
  }
}
